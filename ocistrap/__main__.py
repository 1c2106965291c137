from ocistrap.cli import main

raise SystemExit(main())

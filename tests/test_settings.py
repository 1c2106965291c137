"""The settings table: flags, spec files, their schema, the merge, and the examples."""

import re
import shutil
from pathlib import Path

import pytest
from lockfetch_support import SUITE, Archive, archive, fast_fetcher, template  # noqa: F401  (fixtures)

from ocistrap import cli, settings, settingtable, specfile
from ocistrap.debian import lock
from ocistrap.debian.lock import LockedLayer
from ocistrap.debian.mirror import DEFAULT_KEYRING, DEFAULT_MIRROR
from ocistrap.errors import UsageError
from ocistrap.oci import image
from ocistrap.transports import parse_reference

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def resolved(*argv: str, command: str = "build"):
    return settings.resolve(cli.build_parser().parse_args([command, *argv]), command)


def spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def spec_error(path: Path) -> str:
    with pytest.raises(UsageError) as caught:
        specfile.read_spec(path)
    return str(caught.value)


# ---- the table drives flags and schema ----

def test_committed_schema_is_the_generated_one():
    committed = (ROOT / "specs" / "spec.schema.json").read_text()
    assert committed == specfile.spec_schema_text(), (
        "regenerate it: python -m ocistrap.specfile > specs/spec.schema.json")


@pytest.mark.parametrize("command", settingtable.SPEC_COMMANDS)
def test_every_option_of_lock_and_build_is_a_spec_key(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    common = {a.dest for a in parser._actions} - {"command"}
    dests = {a.dest for a in sub._actions} - {"help", "spec"} - common
    assert dests == {s.key for s in settingtable.rows(command)}
    assert dests <= set(specfile.spec_schema()["properties"])


def test_defaults_when_nothing_is_given():
    s = resolved("bookworm")
    assert (s.suite, s.mirror, s.components, s.keyrings, s.variant) == (
        "bookworm", DEFAULT_MIRROR, ("main",), (DEFAULT_KEYRING,), "minbase")
    assert (s.include, s.layers, s.outputs, s.push, s.architectures) == ((), (), (), (), None)
    assert (s.slim, s.no_updates, s.install_recommends, s.offline, s.tls_verify) == (False, False, False, False, None)
    assert (s.cmd, dict(s.env), s.compression, s.lock, s.spec) == (image.DEFAULT_CMD, {}, "gzip", None, None)
    assert resolved("sid", command="lock").lock == Path("ocistrap.debian.lock")


def test_command_line_as_before():
    s = resolved("bookworm", "--arch", "amd64,arm64", "--include", "a,b", "--include", "c",
                 "--layer", "tools=procps,less", "--layer", "dev=gcc", "--env", "A=1=2", "--env", "B=",
                 "--cmd", "bash -l", "--entrypoint", '["/bin/sh", "-c"]', "--label", "k=v", "--no-updates",
                 "-o", "oci:out:t", "--output", "tar:x.tar", "--push", "host.example/x:1", "--tls-verify", "false",
                 "--keyring", "a.gpg", "--keyring", "b.gpg", "--components", "main,contrib", "--slim",
                 "--no-check-valid-until", "--compression", "zstd", "--sbom", "spdx", "--cache-dir", "c")
    assert s.architectures == ("amd64", "arm64") and s.include == ("a", "b", "c")
    assert s.layers == (LockedLayer("tools", ("procps", "less")), LockedLayer("dev", ("gcc",)))
    assert dict(s.env) == {"A": "1=2", "B": ""} and dict(s.labels) == {"k": "v"}
    assert (s.cmd, s.entrypoint) == (("bash", "-l"), ("/bin/sh", "-c"))
    assert s.outputs == (parse_reference("oci:out:t"), parse_reference("tar:x.tar"))
    assert s.push == (parse_reference("docker://host.example/x:1"),) and s.tls_verify is False
    assert s.keyrings == (Path("a.gpg"), Path("b.gpg")) and s.components == ("main", "contrib")
    assert (s.slim, s.no_updates, s.no_check_valid_until, s.compression, s.sbom) == (True, True, True, "zstd", "spdx")
    assert s.cache_dir == Path("c")


@pytest.mark.parametrize("argv", [["--layer", "bad name=x"], ["--env", "NOEQUALS"], ["--label", "=v"],
                                  ["--tls-verify", "maybe"], ["--compression", "lz4"]])
def test_bad_flag_values_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["build", "bookworm", *argv])
    assert caught.value.code == 2


# ---- command line > file > default ----

def test_command_line_overrides_the_file_which_overrides_defaults(tmp_path):
    path = spec(tmp_path, """
suite = "bookworm"
mirror = "http://mirror.example/debian"
components = ["main", "contrib"]
include = ["hello"]
slim = true
labels = { a = "file", b = "file" }
env = { LANG = "C.UTF-8" }
""")
    s = resolved("-f", str(path), "trixie", "--mirror", "http://other.example/debian", "--include", "procps",
                 "--label", "b=flag", "--label", "c=flag")
    assert s.spec == path
    assert (s.suite, s.mirror, s.include) == ("trixie", "http://other.example/debian", ("procps",))
    assert s.components == ("main", "contrib") and s.slim is True and s.variant == "minbase"
    assert dict(s.labels) == {"a": "file", "b": "flag", "c": "flag"}, "tables merge key by key"
    assert dict(s.env) == {"LANG": "C.UTF-8"}


def test_every_key_read_from_a_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = spec(tmp_path / "sub", """
suite = "sid"
mirror = "http://m.example/debian"
security_mirror = "http://s.example/debian-security"
auth_files = ["auth.conf"]
components = ["main"]
keyrings = ["keys/a.gpg", "/abs/b.gpg"]
architectures = ["arm64"]
variant = "buildd"
include = ["x", "y"]
install_recommends = true
slim = true
no_updates = true
no_check_valid_until = true
lock = "my.lock"
write_lock = "../written.lock"
embed_keyring = true
trust_lock_keyring = true
outputs = ["oci:images:sid", "docker-archive:d.tar:me/debian:sid", "tar:/abs/root.tar",
           "containers-storage:localhost/debian:sid", "oci-archive:~/img.tar"]
push = ["registry.example/debian:sid", "docker://other.example/x"]
tls_verify = false
compression = "zstd"
sbom = "spdx"
sign = "keys/signing.key"
passphrase_file = "/abs/passphrase"
env = { A = "1" }
cmd = ["bash", "-l"]
entrypoint = ["/usr/bin/env"]
workdir = "/src"
user = "nobody"
labels = { l = "v" }
annotations = { n = "v" }
staging_dir = "staging"
mode = "single-uid"
cache_dir = "cache"
offline = true
bundle = "oci:bundles:sid"
snapshot = "20240101T000000Z"
snapshot_url = "http://127.0.0.1:9"

[[layers]]
name = "dev"
packages = ["gcc", "make"]
""")
    assert set(specfile.read_spec(path)) == set(specfile.spec_schema()["properties"])
    base = tmp_path / "sub"
    s = resolved("-f", str(path))
    assert (s.bundle.path, s.snapshot, s.snapshot_url) == (base / "bundles", "20240101T000000Z",
                                                          "http://127.0.0.1:9")
    assert s.keyrings == (base / "keys/a.gpg", Path("/abs/b.gpg"))
    assert s.auth_files == (base / "auth.conf",)
    assert (s.lock, s.write_lock, s.staging_dir, s.cache_dir) == (
        base / "my.lock", base / "../written.lock", base / "staging", base / "cache")
    assert (s.sign, s.passphrase_file) == (base / "keys/signing.key", Path("/abs/passphrase"))
    assert [str(o) for o in s.outputs] == [
        f"oci:{base}/images:sid", f"docker-archive:{base}/d.tar:me/debian:sid", "tar:/abs/root.tar",
        "containers-storage:localhost/debian:sid", f"oci-archive:{Path.home()}/img.tar"]
    assert [str(p) for p in s.push] == ["docker://registry.example/debian:sid", "docker://other.example/x:latest"]
    assert s.layers == (LockedLayer("dev", ("gcc", "make")),)
    assert (s.architectures, s.variant, s.include, s.cmd, s.entrypoint) == (
        ("arm64",), "buildd", ("x", "y"), ("bash", "-l"), ("/usr/bin/env",))
    assert (s.install_recommends, s.slim, s.no_updates, s.no_check_valid_until, s.offline, s.tls_verify) == (
        True, True, True, True, True, False)
    assert (s.workdir, s.user, dict(s.labels), dict(s.annotations)) == ("/src", "nobody", {"l": "v"}, {"n": "v"})
    assert resolved("-f", str(path), command="lock").lock == base / "my.lock", "lock -f writes the spec's lock"


def test_a_login_in_a_mirror_url_is_taken_out_of_the_settings(tmp_path):
    path = spec(tmp_path, 'security_mirror = "https://sec:r3t@s.example/debian-security"\n')
    s = resolved("sid", "--mirror", "https://u:p4ss@m.example/debian", "-f", str(path))
    assert (s.mirror, s.security_mirror) == ("https://m.example/debian", "https://s.example/debian-security")
    assert s.url_logins.for_url("https://m.example/debian/dists/sid/InRelease") == ("u", "p4ss")
    assert s.url_logins.for_url("https://s.example/debian-security/dists/sid-security/InRelease") == ("sec", "r3t")
    assert "p4ss" not in repr(s) and "r3t" not in repr(s)
    assert settings.mirror_logins(s).for_url("https://m.example/debian/pool/x.deb") == ("u", "p4ss")


def test_settings_that_agree_with_the_lock_are_accepted_beside_it(archive: Archive):
    rc, _, err = archive.lock("--include", "hello")
    assert rc == 0, err
    locked = lock.read(archive.lockfile)
    agreeing = resolved(SUITE, "--lock", str(archive.lockfile), "--mirror", f"http://u:p@{archive.mirror.url[7:]}/",
                        "--arch", "amd64", "--variant", "essential", "--include", "hello", "--components", "main",
                        "--security-mirror", "http://elsewhere.example/debian-security", "--no-check-valid-until")
    settings.check_against_lock(agreeing, locked, archive.lockfile)
    with pytest.raises(UsageError, match="layers dev=gcc \\(--layer\\) disagrees .* locks layers none"):
        settings.check_against_lock(resolved("--layer", "dev=gcc"), locked, archive.lockfile)
    with pytest.raises(UsageError, match="install_recommends true"):
        settings.check_against_lock(resolved("--install-recommends"), locked, archive.lockfile)


def test_a_stable_lock_decides_its_companion_suites(archive: Archive):
    archive.repo.write("stable", codename="bookworm")
    archive.repo.write("bookworm-updates")
    archive.repo.write("bookworm-security")
    rc, _, err = archive.lock("--security-mirror", archive.mirror.url, suite="stable")
    assert rc == 0, err
    locked = lock.read(archive.lockfile)
    settings.check_against_lock(resolved("bookworm", "--security-mirror", archive.mirror.url), locked, archive.lockfile)
    with pytest.raises(UsageError, match="no_updates true .* locks no_updates false"):
        settings.check_against_lock(resolved("--no-updates"), locked, archive.lockfile)
    with pytest.raises(UsageError, match="security_mirror http://s.example"):
        settings.check_against_lock(resolved("--security-mirror", "http://s.example"), locked, archive.lockfile)


def test_command_line_paths_stay_relative_to_the_working_directory(tmp_path):
    path = spec(tmp_path, 'suite = "sid"\nlock = "spec.lock"\n')
    s = resolved("-f", str(path), "--lock", "here.lock", "-o", "oci:out", "--staging-dir", "st")
    assert (s.lock, s.outputs[0].path, s.staging_dir) == (Path("here.lock"), Path("out"), Path("st"))


# ---- errors name the file, the key and what was expected ----

@pytest.mark.parametrize("text, expected", [
    ('suit = "bookworm"', "unknown key 'suit' (did you mean 'suite'?)"),
    ('arch = ["amd64"]', "unknown key 'arch' (did you mean 'architectures'?)"),
    ('keyring = ["a.gpg"]', "unknown key 'keyring' (did you mean 'keyrings'?)"),
    ('no_check_valid = true', "unknown key 'no_check_valid' (did you mean 'no_check_valid_until'?)"),
    ('frobnicate = 1', "unknown key 'frobnicate'"),
    ('[[layers]]\nname = "dev"\npackges = ["gcc"]',
     "unknown key 'layers[0].packges' (did you mean 'packages'?)"),
    ('install_recommends = "yes"', "key 'install_recommends': expected true or false, not \"yes\""),
    ('compression = "lz4"', "key 'compression': expected one of \"gzip\", \"zstd\", not \"lz4\""),
    ('variant = "tiny"', "key 'variant': expected one of \"essential\", \"minbase\""),
    ('components = "main"', "key 'components': expected an array of strings, not \"main\""),
    ('components = []', "key 'components': expected at least 1 item, not []"),
    ('include = ["a", 3]', "key 'include[1]': expected a string, not 3"),
    ('suite = ""', "key 'suite': expected a non-empty string"),
    ('env = ["A=1"]', "key 'env': expected a table of strings, not [\"A=1\"]"),
    ('labels = { a = 1 }', "key 'labels.a': expected a string, not 1"),
    ('env = { "A=B" = "1" }', "key 'env': expected a name without '=', not \"A=B\""),
    ('[[layers]]\nname = "dev"', "key 'layers[0].packages' is missing"),
    ('[[layers]]\nname = "bad name"\npackages = ["x"]',
     "key 'layers[0].name': expected a layer name of letters, digits"),
    ('[[layers]]\nname = "dev"\npackages = []', "key 'layers[0].packages': expected at least 1 item"),
    ('cmd = "bash"', "key 'cmd': expected an array of strings"),
    ('suite = 2024-01-01', "key 'suite': expected a string, not 2024-01-01"),
])
def test_spec_errors_name_file_key_and_expectation(tmp_path, text, expected):
    message = spec_error(spec(tmp_path, text + "\n"))
    assert message.startswith(f"{tmp_path / 'spec.toml'}: ")
    assert expected in message


def test_all_problems_are_reported_at_once(tmp_path):
    message = spec_error(spec(tmp_path, 'suit = "x"\nslim = "yes"\nvariant = "tiny"\n'))
    assert "'suit'" in message and "'slim'" in message and "'variant'" in message


def test_unreadable_and_malformed_files(tmp_path):
    assert re.search(r"missing\.toml: cannot read the spec file: No such file", spec_error(tmp_path / "missing.toml"))
    message = spec_error(spec(tmp_path, 'suite = "bookworm"\nmirror = \n'))
    assert "spec.toml: not valid TOML" in message and "line 2" in message


def test_a_bad_output_reference_names_the_key(tmp_path):
    message = spec_error(spec(tmp_path, 'outputs = ["floppy:/dev/fd0"]\n'))
    assert "spec.toml: key 'outputs': 'floppy:/dev/fd0' is not an image reference" in message


def test_cli_reports_a_bad_spec_in_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = spec(tmp_path, 'suite = "bookworm"\ninclude = "hello"\n')
    for command in ("lock", "build"):
        assert cli.main(["-q", command, "-f", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "spec.toml: key 'include': expected an array of strings" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_lock_without_a_suite_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["-q", "lock", "-f", str(spec(tmp_path, 'variant = "minbase"\n'))]) == 2
    assert "name a suite" in capsys.readouterr().err


def test_build_with_a_lock_key_builds_that_lockfile(tmp_path, capsys):
    (tmp_path / "specs").mkdir()
    path = spec(tmp_path / "specs", 'suite = "bookworm"\nlock = "pinned.lock"\n')
    assert cli.main(["-q", "build", "-f", str(path)]) != 0
    assert str(tmp_path / "specs" / "pinned.lock") in capsys.readouterr().err


# ---- lock -f against a signed test archive ----

def test_lock_from_a_spec_file_equals_the_command_line_lock(archive: Archive, tmp_path):
    shutil.copy(archive.keyring, tmp_path / "test-archive.gpg")
    path = spec(tmp_path, f"""
suite = "{SUITE}"
mirror = "{archive.mirror.url}"
keyrings = ["test-archive.gpg"]
architectures = ["amd64"]
variant = "essential"
include = ["hello"]
cache_dir = "cache"
lock = "from-spec.lock"
""")
    rc, _, err = archive.run("lock", "-f", str(path))
    assert rc == 0, err
    rc, _, err = archive.lock("--include", "hello")
    assert rc == 0, err
    from_spec, from_flags = lock.read(tmp_path / "from-spec.lock"), lock.read(archive.lockfile)
    assert from_spec.digest() == from_flags.digest()
    assert "hello" in {p.name for p in from_spec.architectures["amd64"].packages}
    assert (tmp_path / "cache").is_dir(), "cache_dir is relative to the spec file"


# ---- the examples ----

def test_every_example_is_a_valid_spec():
    examples = sorted(EXAMPLES.glob("*.toml"))
    assert {p.name for p in examples} >= {"debian-bookworm.toml", "debian-sid-build-essential.toml",
                                          "debian-trixie-slim.toml", "debian-bookworm-multiarch.toml"}
    for path in examples:
        specfile.read_spec(path)
        assert resolved("-f", str(path)).suite, path


def test_example_bookworm_minbase():
    s = resolved("-f", str(EXAMPLES / "debian-bookworm.toml"))
    assert (s.suite, s.variant, s.layers, s.architectures, s.slim) == ("bookworm", "minbase", (), None, False)
    assert dict(s.labels) == {"org.opencontainers.image.title": "Debian bookworm minbase"}


def test_example_sid_puts_build_essential_in_its_own_layer():
    s = resolved("-f", str(EXAMPLES / "debian-sid-build-essential.toml"))
    assert s.suite == "sid" and s.no_check_valid_until is True
    assert s.layers == (LockedLayer("build-essential", ("build-essential",)),)


def test_example_trixie_slim_locks_and_builds_next_to_itself():
    path = EXAMPLES / "debian-trixie-slim.toml"
    s = resolved("-f", str(path))
    assert (s.suite, s.slim, s.sbom, s.compression) == ("trixie", True, "spdx", "zstd")
    assert s.lock == EXAMPLES / "trixie-slim.lock" == resolved("-f", str(path), command="lock").lock
    assert s.outputs == (parse_reference(f"oci:{EXAMPLES}/images:trixie-slim"),)


def test_example_multiarch():
    s = resolved("-f", str(EXAMPLES / "debian-bookworm-multiarch.toml"))
    assert s.architectures == ("amd64", "arm64") and s.include == ("ca-certificates",)
    assert s.outputs[0].transport == "oci-archive" and s.outputs[0].path.parent == EXAMPLES


def test_containerfile_starts_from_the_image_its_instructions_build():
    text = (EXAMPLES / "Containerfile").read_text()
    built = re.search(r"ocistrap build -f (\S+) -o containers-storage:(\S+)", text)
    assert built and (ROOT / built[1]).is_file()
    assert re.search(r"^ARG BASE=(\S+)$", text, re.M)[1] == built[2]
    assert re.search(r"^FROM \$\{BASE\}$", text, re.M)
    assert "podman build -f examples/Containerfile" in (ROOT / "README.md").read_text()


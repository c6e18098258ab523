"""
The version matrix: txsession's tests and Twisted's suites (swapped in and not) on every
CPython from 3.9 to 3.13 found here, against Twisted releases from the last three years.

    nox                      # the whole matrix
    nox -s newest            # the newest Python here with the newest Twisted
    nox -s stubs             # the type stubs checked against the built module
    nox -s memcheck          # the test suite under valgrind's memcheck (about 5 minutes)

Each session builds a wheel with maturin for its interpreter and installs that wheel, not the
source tree, the way users install the package.
"""

import glob
import os
import shutil

import nox

# Oldest first; the oldest is the oldest Twisted the package supports (see pyproject.toml).
TWISTED = ["23.10.0", "24.11.0", "25.5.0", "26.10.0"]
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]

# Twisted releases older than these do not support that Python.
FIRST_TWISTED_FOR = {"3.13": "24.7.0", "3.12": "23.10.0"}
# Twisted releases that need a newer Python than this.
LAST_TWISTED_FOR = {"3.9": "26.4.0"}

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def _interpreter(version):
    """
    The interpreter for a version: on PATH, else from pyenv, else the bare name (nox then
    reports it missing).
    """
    name = f"python{version}"
    if shutil.which(name) and os.system(f"{name} -c '' 2>/dev/null") == 0:
        return name
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", name)))
    return found[-1] if found else version


def _version(text):
    return tuple(int(part) for part in text.split("."))


def _supported(python, twisted):
    first = FIRST_TWISTED_FOR.get(python, "0")
    last = LAST_TWISTED_FOR.get(python, "9999")
    return _version(first) <= _version(twisted) <= _version(last)


def _installWheel(session, twisted, env=None):
    dist = os.path.join(session.create_tmp(), "dist")
    shutil.rmtree(dist, ignore_errors=True)
    session.install("maturin>=1.9,<2")
    session.run(
        "maturin",
        "build",
        "--release",
        "--interpreter",
        _venvPython(session),
        "--out",
        dist,
        env=env,
    )
    wheel = glob.glob(os.path.join(dist, "*.whl"))[0]
    # This matrix's Twisteds before 26.10 set ALPN on a TLS connection's context after making
    # the connection, which pyOpenSSL 25 and later refuse: every HTTPS server connection fails.
    tls = ["pyopenssl<25"] if _version(twisted) < _version("26.10.0") else []
    session.install(f"{wheel}[test]", f"twisted[test,tls]=={twisted}", *tls)
    # The version number does not change between builds: replace what a reused venv holds.
    session.install("--force-reinstall", "--no-deps", wheel)


def _venvPython(session):
    return os.path.join(session.virtualenv.location, "bin", "python")


def _scratchTests(session):
    """
    A copy of the tests in the session's scratch directory, returned: run from there, the
    installed wheel is what gets imported.
    """
    tmp = session.create_tmp()
    shutil.rmtree(os.path.join(tmp, "tests"), ignore_errors=True)
    shutil.copytree(os.path.join(os.getcwd(), "tests"), os.path.join(tmp, "tests"))
    return tmp


def _checks(session):
    with session.chdir(_scratchTests(session)):
        session.run("python", "-c", "import txsession, sys; print(txsession.__file__)")
        session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
        session.run("python", "-m", "txsession.conformance")


MATRIX = [
    (_interpreter(python), twisted, python)
    for python in PYTHONS
    for twisted in TWISTED
    if _supported(python, twisted)
]


@nox.session
@nox.parametrize(
    "python,twisted",
    [(interp, twisted) for interp, twisted, _ in MATRIX],
    ids=[f"{python}-twisted{twisted}" for _, twisted, python in MATRIX],
)
def tests(session, twisted):
    _installWheel(session, twisted)
    _checks(session)


@nox.session(python=_interpreter(PYTHONS[-1]))
def newest(session):
    _installWheel(session, TWISTED[-1])
    _checks(session)


@nox.session(python=_interpreter("3.11"))
def stubs(session):
    _installWheel(session, TWISTED[-1])
    session.install("mypy")
    allowlist = os.path.join(os.getcwd(), "stubtest-allowlist.txt")
    with session.chdir(session.create_tmp()):
        session.run(
            "python", "-m", "mypy.stubtest", "txsession._txsession", "--allowlist", allowlist
        )


@nox.session(python=_interpreter("3.11"))
def memcheck(session):
    """
    The test suite under valgrind's memcheck, with C{PYTHONMALLOC=malloc} so that every Python
    allocation is seen, on a release build with debug information. tests/memcheck.py then reads
    the log and fails on any error whose stack passes through txsession or PyO3.
    """
    _installWheel(session, TWISTED[-1], env={"CARGO_PROFILE_RELEASE_DEBUG": "true"})
    tmp = _scratchTests(session)
    log = os.path.abspath(os.path.join(tmp, "memcheck.log"))
    with session.chdir(tmp):
        session.run(
            "valgrind",
            "--tool=memcheck",
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "--num-callers=40",
            f"--log-file={log}",
            "python",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests",
            env={"PYTHONMALLOC": "malloc"},
            external=True,
        )
        session.run("python", os.path.join("tests", "memcheck.py"), log)

"""e2e/test.sh's closing line: every test expected to run is counted, a
test missing from the results is a failure named, and under CI=true a skip
is allowed only for a reason on e2e/allowed-skips.txt.

    closing_line.py list [--manifest-checks FILE] <LIST_OUTPUT
        `cargo test -- --list` (stdout and stderr; the workspace's and the
        kube scenarios') as the expected-tests file: one "binary<TAB>test"
        line a test, sorted; with the unittest checks of FILE
        (e2e/deploy/check_manifests.py) under "check_manifests", named as
        they report themselves.
    closing_line.py tally --cargo-log LOG --expected FILE [--results FILE]...
            [--skips FILE] [--allowed-skips FILE] [--kube-log LOG --kube-status N]
        Prints what did not run and why, then "swell: P passed, F failed,
        S skipped"; exits 1 if anything failed.

Inputs of `tally`:
- the cargo test log (stdout and stderr): each test's "test NAME ... RESULT"
  line under the "Running SRC (BINARY)" line of its binary;
- results files: what a lane or script that is not a cargo test judged, one
  "name<TAB>ok|FAILED|skipped<TAB>why" line a test (the VM lane's
  target/vm/results.tsv, and $SWELL_RESULTS, which e2e/test.sh's `check`
  fills);
- the skip log (e2e/src/host.rs: "test<TAB>reason" lines): a skipped cargo
  test returned at once and cargo counted it as passed, so it moves from the
  passed to the skipped, unless the VM lane ran it (it then counts once, as
  the lane judged it);
- the kube lane's log, whose "test result:" lines count (it runs filtered
  subsets of its scenarios); a lane that failed without a failed test counts
  one failure.

Expected tests are looked for where each runs: the kube scenarios
("kube tests/kube/main.rs") in the kube lane's log (unless SWELL_KUBE_ONLY
asked for some of them), the manifest checks ("check_manifests") in the
results files, every other in the cargo log.
"""

import argparse
import ast
import os
import re
import sys

RUNNING = re.compile(r"^\s*Running (?:unittests )?(\S+) \((?:.*/)?([^/()]+?)(?:-[0-9a-f]{16})?(?:\.exe)?\)\s*$")
DOC_TESTS = re.compile(r"^\s*Doc-tests (\S+)\s*$")
# Unanchored: a process a test started may have written to the same stream
# without a newline before libtest's line.
RESULT = re.compile(r"test (\S+) \.\.\. (ok|FAILED|ignored)")
LISTED = re.compile(r"^(\S+): test$")
TEST_RESULT = re.compile(r"^test result: \S+\. (\d+) passed; (\d+) failed; (\d+) ignored")
# The VM lane's own skip when it cannot start (e2e/vm/run.sh); not a cargo test.
VM_LANE = "vm lane"
# Where the expected list keeps the tests that are not run by cargo test --workspace.
KUBE = "kube tests/kube/main.rs"
MANIFESTS = "check_manifests"


def binary_of(line):
    """The test binary a "Running" or "Doc-tests" line of cargo starts, as
    "STEM SRC" (a crate's lib and bin share the stem), or None."""
    if m := RUNNING.match(line):
        return f"{m.group(2)} {m.group(1)}"
    if m := DOC_TESTS.match(line):
        return f"{m.group(1)} doc-tests"
    return None


def listed_tests(lines):
    """(binary, test) pairs of `cargo test -- --list` output."""
    binary = None
    for line in lines:
        binary = binary_of(line) or binary
        if (m := LISTED.match(line.rstrip("\n"))) and binary:
            yield binary, m.group(1)


def manifest_checks(path):
    """(MANIFESTS, name) of each test method of each unittest.TestCase class
    in the file at `path`, named as its Reporting result writes them."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and any(ast.unparse(base) == "unittest.TestCase" for base in cls.bases):
            for method in cls.body:
                if isinstance(method, ast.FunctionDef) and method.name.startswith("test"):
                    yield MANIFESTS, f"{MANIFESTS}::{cls.name}.{method.name}"


def cargo_results(lines):
    """{(binary, test): result} of a cargo test log; a test reported twice
    keeps its last result."""
    results, binary = {}, None
    for line in lines:
        binary = binary_of(line) or binary
        if (m := RESULT.search(line)) and binary:
            results[(binary, m.group(1))] = m.group(2)
    return results


def read_tsv(path, columns):
    rows = []
    if path and os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    fields = line.rstrip("\n").split("\t")
                    rows.append(fields + [""] * (columns - len(fields)))
    return rows


def read_lines(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readlines()


def allowed_reasons(path):
    """The skip reasons allowed under CI: one a line, exactly as the test
    words it; blank lines and # comments aside."""
    if not path:
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")}


def section(title, items):
    if items:
        print()
        print(f"{title} ({len(items)}):")
        for item in items:
            print(f"  - {item}")


def tally(args):
    in_ci = args.ci or os.environ.get("CI") == "true"
    listed = {(b, t) for b, t, *_ in read_tsv(args.expected, 2)}
    expected = {(b, t) for b, t in listed if b not in (KUBE, MANIFESTS)}
    ran = cargo_results(read_lines(args.cargo_log))
    passed = sum(r == "ok" for r in ran.values())
    failed = sum(r == "FAILED" for r in ran.values())
    ignored = sum(r == "ignored" for r in ran.values())
    missing = expected - set(ran)
    unlisted = sorted(set(ran) - expected)

    lane_results = [row[:3] for path in args.results for row in read_tsv(path, 3)]
    reported = {name for name, _, _ in lane_results}
    missing |= {(b, t) for b, t in listed if b == MANIFESTS and t not in reported}
    if args.kube_log and not os.environ.get("SWELL_KUBE_ONLY"):
        kube_ran = {m.group(1) for m in map(RESULT.search, read_lines(args.kube_log)) if m}
        missing |= {(b, t) for b, t in listed if b == KUBE and t not in kube_ran}
    missing = sorted(missing)
    failed += len(missing)

    lane_failed = [f"{name}: {why}" for name, result, why in lane_results if result not in ("ok", "skipped")]
    lane_skipped = [(name, why) for name, result, why in lane_results if result == "skipped"]
    passed += sum(result == "ok" for _, result, _ in lane_results)
    failed += len(lane_failed)

    if args.kube_log:
        kube = [TEST_RESULT.match(line) for line in read_lines(args.kube_log)]
        counts = [tuple(map(int, m.groups())) for m in kube if m]
        kube_failed = sum(c[1] for c in counts)
        passed += sum(c[0] for c in counts)
        failed += kube_failed
        ignored += sum(c[2] for c in counts)
        if args.kube_status and not kube_failed:
            lane_failed.append(f"kube lane: exit {args.kube_status} without a failed scenario")
            failed += 1

    skips = {}
    for test, reason in (row[:2] for row in read_tsv(args.skips, 2)):
        # The VM lane's own skip reaches the results as the lane's (e2e/test.sh).
        if test != VM_LANE:
            skips.setdefault(test, reason)
    vm_tests = {name.rsplit("/", 1)[-1] for name, _, _ in read_tsv(args.vm_results, 3)} if args.vm_results else set()
    # A skipped cargo test was counted as passed above.
    passed -= len(skips)
    allowed = allowed_reasons(args.allowed_skips)
    every_skip = sorted(set(skips.items()) | set(lane_skipped))
    unallowed = [f"{t}: {r}" for t, r in every_skip if in_ci and r not in allowed]
    failed += len(unallowed)
    not_run = [f"{t}: {r}" for t, r in every_skip if t not in vm_tests and not (in_ci and r not in allowed)]
    in_vm = sorted(t for t in skips if t in vm_tests)

    section("Not run on this machine but in the VM lane", in_vm)
    section("Not run on this machine, with the reason", not_run)
    section("Expected (e2e/expected-tests.tsv) but missing from the results, counted as failed", [f"{b}: {t}" for b, t in missing])
    section("Ran but not in e2e/expected-tests.tsv (e2e/expected-tests.sh adds them)", [f"{b}: {t}" for b, t in unlisted])
    section("Skipped under CI=true for a reason not on e2e/allowed-skips.txt, counted as failed", unallowed)
    section("Failed outside cargo test", lane_failed)
    print()
    print(f"swell: {passed} passed, {failed} failed, {ignored + len(not_run)} skipped")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list")
    listing.add_argument("--manifest-checks", help="e2e/deploy/check_manifests.py, whose checks join the list")
    t = sub.add_parser("tally")
    t.add_argument("--cargo-log", required=True)
    t.add_argument("--expected", required=True)
    t.add_argument("--results", action="append", default=[])
    t.add_argument("--vm-results", help="the VM lane's results (also given as --results), whose tests a host skip may name")
    t.add_argument("--skips")
    t.add_argument("--allowed-skips")
    t.add_argument("--kube-log")
    t.add_argument("--kube-status", type=int, default=0)
    t.add_argument("--ci", action="store_true", help="as CI=true")
    args = parser.parse_args()
    if args.command == "list":
        tests = set(listed_tests(sys.stdin))
        if args.manifest_checks:
            tests |= set(manifest_checks(args.manifest_checks))
        for binary, test in sorted(tests):
            print(f"{binary}\t{test}")
        return 0
    return tally(args)


if __name__ == "__main__":
    sys.exit(main())

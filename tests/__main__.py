"""Run the whole suite: ``python3 -m tests`` (from the project root).

Plain unittest discovery, with a closing line ``tests: N passed, N failed, N skipped``
that CI reads.  Extra arguments are test name patterns (``python3 -m tests limits``
runs the tests whose id contains "limits").
"""
import sys
import unittest
from pathlib import Path


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    suite = unittest.defaultTestLoader.discover(str(root / "tests"), top_level_dir=str(root))
    patterns = sys.argv[1:]
    if patterns:
        def keep(s):
            for t in s:
                if isinstance(t, unittest.TestSuite):
                    yield from keep(t)
                elif any(p in t.id() for p in patterns):
                    yield t
        suite = unittest.TestSuite(keep(suite))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    # A test counts once however many of its subtests failed, and a failed test whose
    # clean-up failed too is one failure (they made "-1 passed").
    failing = {getattr(test, "test_case", test).id() for test, _ in result.failures + result.errors}
    failed = len(failing | {test.id() for test in result.unexpectedSuccesses})
    skipped = len(result.skipped)
    passed = max(0, result.testsRun - failed - skipped)
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

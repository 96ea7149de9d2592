"""perf/'s errors: subclasses of the one family in hostpgo.errors; only the command line maps them to exit codes.

A failed external tool is hostpgo.errors.CommandError (exit 4) raised by the one runner."""

from hostpgo.errors import CommandError, HostpgoError, InputError

__all__ = ["CommandError", "IncompatibleResults", "PerfError", "ResultsError", "SpecError", "UncountableError"]


class PerfError(HostpgoError):
    """Base class of every error the measurement code raises on purpose."""

    exit_code = 1


class SpecError(PerfError, InputError):
    """A user-given specification (interpreter, workload list, run name) cannot be used."""

    exit_code = 2


class IncompatibleResults(PerfError):
    """Two result sets cannot be compared (different benchmark code, parameters or units)."""

    exit_code = 3


class ResultsError(PerfError):
    """A results directory or file is missing, malformed or of an unknown schema."""

    exit_code = 5


class UncountableError(PerfError):
    """valgrind cannot run an interpreter to count it: it executes an instruction valgrind cannot decode.

    Its own exit code, so that a caller of `perf counters` (perf autotune) tells it from a failed tool."""

    exit_code = 6

"""Attribution parsing: perf report by DSO and symbol, and grouping of objects into libraries."""

from perf import attribute

DSO_REPORT = """\
    61.20%  libpython3.11.so.1.0
    20.00%  _c_expression.cpython-311-x86_64-linux-gnu.so
     8.30%  libmindspore_backend.so
     5.00%  libc.so.6
     2.50%  [kernel.kallsyms]
     2.00%  _raylet.so
     1.00%  libstdc++.so.6.0.30


"""

SYM_REPORT = """\
    29.82%  python3.11         [.] _PyEval_EvalFrameDefault
    13.00%  python3.11         [.] 0x000000000013f786
     2.34%  libc.so.6          [.] __memset_avx2_unaligned_erms
     0.58%  [kernel.kallsyms]  [k] do_anonymous_page
"""


def test_groups():
    assert attribute.group_of("python3.11") == "CPython"
    assert attribute.group_of("/usr/lib/libpython3.11.so.1.0") == "CPython"
    assert attribute.group_of("_c_expression.cpython-311-x86_64-linux-gnu.so") == "MindSpore"
    assert attribute.group_of("_raylet.so") == "Ray"
    assert attribute.group_of("libc.so.6") == "libc"
    assert attribute.group_of("[kernel.kallsyms]") == "kernel"
    assert attribute.group_of("_json.cpython-311-x86_64-linux-gnu.so") == "extension modules"
    assert attribute.group_of("libfoo.so") == "other"


def test_parse_dso_and_group_shares():
    shares = attribute.parse_dso_report(DSO_REPORT)
    assert shares["libpython3.11.so.1.0"] == 61.2 and len(shares) == 7
    groups = attribute.group_shares(shares)
    assert list(groups)[:2] == ["CPython", "MindSpore"]
    assert groups["MindSpore"] == 28.3


def test_parse_symbols_separates_unresolved():
    rows = attribute.parse_sym_report(SYM_REPORT)
    hot, unresolved = attribute.summarise_symbols(rows, top=2)
    assert [h["symbol"] for h in hot] == ["_PyEval_EvalFrameDefault", "__memset_avx2_unaligned_erms"]
    assert unresolved == {"python3.11": 13.0}

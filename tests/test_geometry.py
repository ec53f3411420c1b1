"""gpuconv.geometry: TF's size/padding rule, legal transposed shapes, problem records.

Expected values come from tf-semantics.md section 1 (rows marked [run] were executed on TF 2.21) and from the
brute-force re-derivation in tests/loop_reference.py (which shares no code with gpuconv.geometry).
"""
from __future__ import annotations

import itertools

import pytest

import loop_reference as R
from gpuconv import geometry as G

# tf-semantics.md section 1.1, SAME, 1-D: n, k, s, d, out, P, pb, pa, first-tap input index per output
# ("pad" = the first tap reads padding, i.e. a negative index).
SAME_TABLE = [
    (5, 2, 1, 1, 5, 1, 0, 1, "0 1 2 3 4"),
    (5, 3, 2, 1, 3, 2, 1, 1, "pad 1 3"),
    (6, 3, 2, 1, 3, 1, 0, 1, "0 2 4"),
    (6, 4, 2, 1, 3, 2, 1, 1, "pad 1 3"),
    (7, 3, 2, 2, 4, 4, 2, 2, "pad 0 2 4"),
    (4, 4, 1, 1, 4, 3, 1, 2, "pad 0 1 2"),
    (10, 3, 3, 1, 4, 2, 1, 1, "pad 2 5 8"),
]


@pytest.mark.parametrize("n,k,s,d,out,total,pb,pa,first", SAME_TABLE)
def test_same_table(n, k, s, d, out, total, pb, pa, first):
    got = G.axis_geometry(n, k, s, d, "SAME")
    assert got == (out, pb, pa)
    assert pb + pa == total
    taps = " ".join("pad" if o * s - pb < 0 else str(o * s - pb) for o in range(out))
    assert taps == first


@pytest.mark.parametrize("n,k,s,d,padding,expected", [
    (5, 3, 1, 1, "VALID", (3, 0, 0)),
    (5, 3, 2, 1, "VALID", (2, 0, 0)),
    (6, 3, 2, 1, "VALID", (2, 0, 0)),
    (7, 3, 2, 2, "VALID", (2, 0, 0)),           # eff 5: (7 - 5 + 2) // 2
    (3, 4, 1, 1, "VALID", (0, 0, 0)),           # out == 0 passes: an empty result
    (1, 4, 2, 1, "VALID", (0, 0, 0)),           # (1 - 4 + 2) / 2 truncates to 0 in C++: not an error
    (5, 3, 1, 1, (1, 2), (6, 1, 2)),
    (5, 3, 2, 2, (2, 0), (2, 2, 0)),            # (5 + 2 - 5 + 2) // 2
    (0, 1, 1, 1, "SAME", (0, 0, 0)),
    (1, 5, 1, 1, "SAME", (1, 2, 2)),
])
def test_valid_explicit_rows(n, k, s, d, padding, expected):
    assert G.axis_geometry(n, k, s, d, padding) == expected


def test_negative_size_is_an_error():
    # tf-semantics 1.1 [run]: input 3, effective filter 5, stride 1 -> -1 -> error.
    with pytest.raises(ValueError, match="negative"):
        G.axis_geometry(3, 5, 1, 1, "VALID")
    with pytest.raises(ValueError, match="negative"):
        G.axis_geometry(3, 3, 1, 2, "VALID")     # dilation makes eff 5
    with pytest.raises(ValueError, match="negative"):
        G.axis_geometry(1, 4, 1, 1, (0, 1))


@pytest.mark.parametrize("n,k,s,d", list(itertools.product(range(0, 9), range(1, 5), range(1, 4), range(1, 3))))
def test_axis_geometry_matches_reference(n, k, s, d):
    for padding in ["SAME", "VALID", (0, 0), (1, 0), (0, 2), (2, 1)]:
        try:
            want = R.axis_size(n, k, s, d, padding)
        except ValueError:
            with pytest.raises(ValueError):
                G.axis_geometry(n, k, s, d, padding)
            continue
        assert G.axis_geometry(n, k, s, d, padding) == want


# tf-semantics 1.3 [run]: I=3, k=3, s=2 -> SAME {5,6}, VALID {7,8}
@pytest.mark.parametrize("padding,expected", [("SAME", (5, 6)), ("VALID", (7, 8))])
def test_transposed_range_examples(padding, expected):
    assert G.transposed_output_range(3, 3, 2, 1, padding) == expected


@pytest.mark.parametrize("i,k,s,d", list(itertools.product(range(0, 6), range(1, 5), range(1, 4), range(1, 3))))
def test_transposed_range_is_exactly_the_legal_set(i, k, s, d):
    # Legal = every O whose forward size is i (brute force in the reference). i = 0: the forward size truncates
    # toward zero, so the range is wider than the formula for i >= 1 gives.
    for padding in ["SAME", "VALID", (1, 0), (0, 2), (2, 2)]:
        lo, hi = G.transposed_output_range(i, k, s, d, padding)
        want = {o for o in range(0, (i + 2) * s + (k - 1) * d + 4)
                if R._forward_size_or_none(o, k, s, d, padding) == i}
        assert set(range(lo, hi + 1)) == want, (padding, lo, hi, sorted(want))


@pytest.mark.parametrize("i,k,s", list(itertools.product(range(0, 4), range(1, 4), range(1, 4))))
def test_illegal_backprop_size_message_gives_the_legal_range_or_says_none_exists(i, k, s):
    """The output_shape / input_sizes error prints the brute-force legal range; where pads leave no legal size,
    it says so and gives the smallest forward size (old code printed an empty range such as [0, -1])."""
    for pads in [(0, 0), (1, 2), (3, 3), (5, 4)]:
        legal = [o for o in range(0, (i + 2) * s + k + 12) if R._forward_size_or_none(o, k, s, 1, pads) == i]
        o = (legal[-1] + 1) if legal else 2          # an illegal height
        p = G.conv_problem((1, 1, o, 1, 1), (1, k, 1, 1, 1), (1, s, 1), (1, 1, 1), ((0, 0), pads, (0, 0)))
        with pytest.raises(ValueError) as err:
            G.check_backprop_output(p, (1, 1, i, 1, 1), ((0, 0), pads, (0, 0)), "output_shape")
        msg = str(err.value)
        if legal:
            assert f"height in [{legal[0]}, {legal[-1]}]" in msg, msg
        else:
            smallest = R._forward_size_or_none(0, k, s, 1, pads)       # forward sizes grow with o
            assert "none exists" in msg and f"even height 0 gives {smallest};" in msg, msg


def test_conv_problem_fields():
    p = G.conv_problem((2, 1, 6, 7, 4), (1, 3, 2, 2, 6), (1, 2, 1), (1, 1, 2), "SAME")
    assert p.groups == 2 and p.group_c == 2 and p.group_k == 3
    assert (p.Z, p.P, p.Q) == (1, 3, 7)
    assert p.pad_before == (0, 0, 1) and p.pad_after == (0, 1, 1)   # H: P=1 -> 0/1; W: eff 3, P=2 -> 1/1
    assert p.y_shape == (2, 1, 3, 7, 6)
    assert p.w_shape == (1, 3, 2, 2, 6)
    assert p.flops() == 2 * (2 * 3 * 7) * 6 * (2 * 3 * 2)         # per output: C/G * taps MACs
    assert not p.is_empty and not p.needs_int64()


def test_conv_problem_channel_errors():
    with pytest.raises(ValueError, match="filters"):
        G.conv_problem((1, 1, 4, 4, 5), (1, 3, 3, 2, 4), (1, 1, 1), (1, 1, 1), "SAME")   # 5 % 2
    with pytest.raises(ValueError, match="filters"):
        G.conv_problem((1, 1, 4, 4, 4), (1, 3, 3, 2, 3), (1, 1, 1), (1, 1, 1), "SAME")   # 3 % groups 2


def test_conv_problem_empty_and_int64():
    p = G.conv_problem((1, 1, 2, 2, 1), (1, 3, 3, 1, 1), (1, 1, 1), (1, 1, 1), "VALID")
    assert p.is_empty and p.y_shape == (1, 1, 0, 0, 1)
    big = G.conv_problem((1, 1, 2**16, 2**15, 1), (1, 1, 1, 1, 1), (1, 1, 1), (1, 1, 1), "VALID")
    assert big.needs_int64()


def test_check_backprop_output_names_dimension_and_range():
    p = G.conv_problem((1, 1, 11, 6, 1), (1, 3, 3, 1, 1), (1, 2, 2), (1, 1, 1), "SAME")
    # forward of height 11 is 6, but the gradient has height 3: legal heights for 3 are [5, 6]
    with pytest.raises(ValueError) as e:
        G.check_backprop_output(p, (1, 1, 3, 3, 1), "SAME", "output_shape")
    msg = str(e.value)
    assert "output_shape" in msg and "height" in msg and "[5, 6]" in msg


def test_pool_problem():
    p = G.pool_problem((2, 1, 5, 5, 3), (1, 3, 3), (1, 2, 2), "SAME")
    assert p.y_shape == (2, 1, 3, 3, 3) and p.pad_before == (0, 1, 1) and p.pad_after == (0, 1, 1)
    with pytest.raises(ValueError, match="padding"):
        G.pool_problem((1, 1, 5, 5, 1), (1, 2, 2), (1, 1, 1), ((0, 0), (2, 0), (0, 0)))
    # height 0 with pads (1, 1) and window 2 would give a window made of padding only
    with pytest.raises(ValueError, match="input"):
        G.pool_problem((1, 1, 0, 5, 1), (1, 2, 2), (1, 1, 1), ((0, 0), (1, 1), (0, 0)))
    assert G.pool_problem((1, 1, 0, 5, 1), (1, 2, 2), (1, 1, 1), "SAME").is_empty


def test_zero_window_filter_is_an_error():
    # eff = (0 - 1) * d + 1 <= 0 would give VALID out = n + 1 (larger than the input); TF refuses such filters.
    with pytest.raises(ValueError, match="filters"):
        G.conv_problem((1, 1, 4, 4, 2), (1, 0, 2, 2, 3), (1, 1, 1), (1, 1, 1), "VALID")
    with pytest.raises(ValueError, match="filters"):
        G.conv_problem((1, 1, 4, 4, 2), (1, 2, 0, 2, 3), (1, 1, 1), (1, 1, 1), "SAME")
    # zero out-channels is only an empty result
    assert G.conv_problem((1, 1, 4, 4, 2), (1, 2, 2, 2, 0), (1, 1, 1), (1, 1, 1), "SAME").is_empty


def test_problem_builders_keep_their_results_but_check_every_call():
    """conv_problem / pool_problem are memoised: a repeated call returns the same (immutable) record, equal to a
    fresh build; a bad call raises every time, naming the argument it was given."""
    args = ((2, 1, 9, 9, 3), (1, 3, 3, 3, 4), (1, 2, 2), (1, 1, 1), "SAME")
    assert G.conv_problem(*args) is G.conv_problem(*args)
    assert G.conv_problem(*args) == G._conv_problem.__wrapped__(*args, "input", "filters")
    listed = ([2, 1, 9, 9, 3], [1, 3, 3, 3, 4], [1, 2, 2], [1, 1, 1], "SAME")        # lists: the same record
    assert G.conv_problem(*listed) is G.conv_problem(*args)
    assert G.pool_problem((1, 1, 5, 5, 1), [1, 2, 2], [1, 1, 1], [(0, 0), [1, 0], (0, 1)]).pad_before == (0, 1, 0)
    pool = ((2, 1, 9, 9, 3), (1, 3, 3), (1, 2, 2), "VALID")
    assert G.pool_problem(*pool) is G.pool_problem(*pool) == G._pool_problem.__wrapped__(*pool, "input")
    bad = ((1, 1, 4, 4, 2), (1, 3, 3, 3, 4), (1, 1, 1), (1, 1, 1), "SAME")      # 2 channels, filters want 3
    for _ in range(2):
        with pytest.raises(ValueError, match="filters"):
            G.conv_problem(*bad)
    with pytest.raises(ValueError, match="filter_sizes"):
        G.conv_problem(*bad, filter_arg="filter_sizes")
    for arg in ("input", "orig_input"):
        with pytest.raises(ValueError, match=arg):
            G.pool_problem((1, 1, 0, 5, 1), (1, 2, 2), (1, 1, 1), ((0, 0), (1, 1), (0, 0)), arg)


def test_needs_int64_is_computed_with_the_problem():
    """The 64-bit flag is fixed when a record is made (dataclasses.replace makes a new one) and is no part of
    equality."""
    import dataclasses
    p = G.conv_problem((1, 1, 8, 8, 4), (1, 3, 3, 4, 4), (1, 1, 1), (1, 1, 1), "SAME")
    assert not p.needs_int64()
    big = dataclasses.replace(p, N=2**27)            # x: 2^27 * 256 = 2^35 elements
    assert big.needs_int64() and dataclasses.replace(big, N=1) == p
    q = G.pool_problem((1, 1, 8, 8, 4), (1, 2, 2), (1, 2, 2), "VALID")
    assert not q.needs_int64() and dataclasses.replace(q, C=2**29).needs_int64()

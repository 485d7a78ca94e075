"""``protolib bounds``: print a loss lower bound (MATH.md section 4)."""

from __future__ import annotations

import argparse
from typing import Any

from protolib.commands.common import fail


def add_parser(commands: Any) -> None:
    bounds = commands.add_parser("bounds", help="print a loss lower bound (MATH.md section 4)")
    bounds.add_argument("loss", choices=["supcon", "ce"])
    bounds.add_argument("--classes", type=int, required=True, help="K")
    bounds.add_argument("--rho", type=float, help="embedding norm bound / sphere radius")
    bounds.add_argument("--tau", type=float, help="temperature; rho = 1/sqrt(tau)")
    bounds.add_argument("--samples", type=int, help="supcon: N (balanced classes)")
    bounds.add_argument("--batch-size", type=int, help="supcon: b")
    bounds.add_argument("--lam", type=float, help="ce: weight decay (Corollary 2)")
    bounds.add_argument("--weight-norm", type=float, help="ce: |W|_F (Theorem 1)")
    bounds.add_argument("--row-norm", type=float, help="ce: max |w_y| (Corollary 1)")
    bounds.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the bound that ``args`` ask for (exactly one of --rho/--tau; for ce exactly
    one of --lam/--weight-norm/--row-norm)."""
    from protolib.theory import BoundError

    if (args.rho is None) == (args.tau is None):
        return fail(
            "bounds", "give exactly one of --rho (sphere radius) and --tau (rho = 1/sqrt(tau))"
        )
    if args.tau is not None and not args.tau > 0:
        return fail("bounds", f"--tau must be > 0, got {args.tau}")
    rho = args.rho if args.rho is not None else 1 / args.tau**0.5
    try:
        if args.loss == "supcon":
            return _supcon(args, rho)
        return _ce(args, rho)
    except BoundError as error:
        return fail("bounds", str(error))


def _supcon(args: argparse.Namespace, rho: float) -> int:
    from protolib.theory import supcon_bound

    if args.samples is None or args.batch_size is None:
        return fail("bounds", "supcon needs --samples and --batch-size")
    bound = supcon_bound(args.samples, args.classes, args.batch_size, rho)
    print(
        f"SupCon Theorem 2 (N={args.samples}, K={args.classes}, b={args.batch_size}, "
        f"rho={rho:.6g}): {bound.per_batch:.12g} per batch; total over all "
        f"C(N+b-1, b) = exp({bound.log_num_batches:.6f}) multisets: "
        f"exp({bound.log_total:.6f})"
    )
    return 0


def _ce(args: argparse.Namespace, rho: float) -> int:
    from protolib.theory import ce_bound_frobenius, ce_bound_row_norm, ce_l2_bound

    given = [x for x in (args.lam, args.weight_norm, args.row_norm) if x is not None]
    if len(given) != 1:
        return fail("bounds", "ce needs exactly one of --lam, --weight-norm, --row-norm")
    if args.lam is not None:
        value, r = ce_l2_bound(args.classes, rho, args.lam)
        print(
            f"CE + lam*|W|_F^2 Corollary 2 (K={args.classes}, rho={rho:.6g}, "
            f"lam={args.lam:g}): {value:.12g} at r* = {r:.12g}"
        )
    elif args.weight_norm is not None:
        value = ce_bound_frobenius(args.classes, rho, args.weight_norm)
        print(
            f"CE Theorem 1 (K={args.classes}, rho={rho:.6g}, "
            f"|W|_F={args.weight_norm:g}): {value:.12g}"
        )
    else:
        value = ce_bound_row_norm(args.classes, rho, args.row_norm)
        print(
            f"CE Corollary 1 (K={args.classes}, rho={rho:.6g}, r={args.row_norm:g}): {value:.12g}"
        )
    return 0

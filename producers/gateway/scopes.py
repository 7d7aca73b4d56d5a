"""Token scopes: which event types each scope may publish, and the ``TOKEN=scope+scope`` syntax."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from schemas.events import INPUT_TYPES, OUTPUT_TYPES

Scope = Literal["engagement", "orders", "payments", "control"]
SCOPES: Final[tuple[Scope, ...]] = ("engagement", "orders", "payments", "control")
DEFAULT_SCOPES: Final[frozenset[str]] = frozenset({"engagement", "orders"})  # a token written alone
MIN_TOKEN_CHARS: Final = 16

# Event type → the scopes any one of which lets a caller publish it. The pipeline's outputs are in
# no scope: only workers write them.
TYPE_SCOPES: Final[dict[str, frozenset[str]]] = {
    **{t: frozenset({"engagement"}) for t in INPUT_TYPES
       if t.startswith(("viewer.", "cart.")) or t == "product.clicked"},
    "order.placed": frozenset({"orders"}),
    "order.cancelled": frozenset({"orders", "payments"}),
    "order.paid": frozenset({"payments"}),
    "order.refunded": frozenset({"payments"}),  # money goes back: the payment service only
    "sale.opened": frozenset({"control"}),
    "sale.closed": frozenset({"control"}),
    "stock.adjusted": frozenset({"control"}),
}
assert set(TYPE_SCOPES) == set(INPUT_TYPES), "every input type needs a scope"


def canonical(scopes: frozenset[str] | set[str]) -> tuple[Scope, ...]:
    return tuple(s for s in SCOPES if s in scopes)


def parse_scopes(text: str) -> frozenset[str]:
    """``engagement+orders`` (or comma-separated) → the scope set; raises ValueError naming an unknown scope."""
    names = [s.strip() for s in text.replace(",", "+").split("+") if s.strip()]
    unknown = [s for s in names if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (scopes: {', '.join(SCOPES)})")
    if not names:
        raise ValueError(f"an empty scope list (scopes: {', '.join(SCOPES)})")
    return frozenset(names)


def parse_entry(entry: str) -> tuple[str, frozenset[str]]:
    """``TOKEN`` (scopes engagement+orders) or ``TOKEN=scope+scope``. Only the text after the last ``=``
    is read as scopes, and only when it is not empty, so base64 padding (``abc==``) stays in the token.
    The error never quotes the token."""
    token, sep, tail = entry.rpartition("=")
    if not sep or not tail:
        token, scopes = entry, DEFAULT_SCOPES
    else:
        scopes = parse_scopes(tail)
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"must have at least {MIN_TOKEN_CHARS} characters")
    return token, scopes


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``key`` names the caller for the rate limit (the token's position, never the
    token; None when auth is off) and ``scopes`` what it may publish."""

    key: str | None
    scopes: frozenset[str]

    def refusal(self, event_type: str) -> tuple[str, str] | None:
        """(metric reason, message) when this caller may not publish ``event_type``; None if it may."""
        if event_type in OUTPUT_TYPES:
            return "output_type", (f"{event_type} is a pipeline output: only workers write it, no token may "
                                   "publish it")
        allowed = TYPE_SCOPES.get(event_type)
        if allowed is None or allowed & self.scopes:
            return None  # an unknown type is the validator's to refuse
        have = "+".join(canonical(self.scopes)) or "none"
        need = " or ".join(canonical(allowed))
        return "missing_scope", f"{event_type} needs the {need} scope; this caller has {have}"

    def require(self, *any_of: str) -> str | None:
        """A message when the caller holds none of ``any_of``; None if it holds one."""
        if self.scopes & set(any_of):
            return None
        have = "+".join(canonical(self.scopes)) or "none"
        return f"this endpoint needs the {' or '.join(any_of)} scope; this caller has {have}"

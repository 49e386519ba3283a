"""Who may do what: roles granted the actions emit, query and administer.

Deny by default: a role nobody granted anything can do nothing. The policy is immutable;
`grant` returns a new one, so a reload swaps a whole policy and never edits a live one.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from quipu.core.errors import BadInput, Forbidden


class Action(Enum):
    EMIT = "emit"
    QUERY = "query"
    ADMINISTER = "administer"


@dataclass(frozen=True)
class PermissionPolicy:
    grants: Mapping[str, frozenset[Action]] = field(default_factory=dict)
    allow_unlisted: bool = False  # allow-by-default: for development only

    def __post_init__(self) -> None:
        object.__setattr__(self, "grants", MappingProxyType(dict(self.grants)))

    @classmethod
    def deny_by_default(cls) -> "PermissionPolicy":
        return cls()

    @classmethod
    def allow_all(cls) -> "PermissionPolicy":
        """Every role may do everything: for embedded use and tests, never a server."""
        return cls(allow_unlisted=True)

    @classmethod
    def from_json(cls, obj: object, where: str = "auth.grants") -> "PermissionPolicy":
        """`{"role": ["emit", "query"], ...}`; an unknown action is a BadInput."""
        if not isinstance(obj, Mapping):
            raise BadInput(f"{where}: expected an object of role -> list of actions")
        policy = cls()
        for role, actions in obj.items():
            if not isinstance(actions, list):
                raise BadInput(f"{where}.{role}: expected a list of actions (emit, query, administer)")
            policy = policy.grant(role, (_action(a, f"{where}.{role}") for a in actions))
        return policy

    def grant(self, role: str, actions: Iterable[Action]) -> "PermissionPolicy":
        merged = dict(self.grants)
        merged[role] = self.grants.get(role, frozenset()) | frozenset(actions)
        return PermissionPolicy(merged, self.allow_unlisted)

    def is_allowed(self, role: str, action: Action) -> bool:
        if role in self.grants:
            return action in self.grants[role]
        return self.allow_unlisted

    def check(self, role: str, action: Action) -> None:
        if not self.is_allowed(role, action):
            raise Forbidden(f"this token's role is not granted {action.value}")

    def check_any(self, role: str) -> None:
        """For what every granted caller may read (types, columns: emitters need them too)."""
        if not any(self.is_allowed(role, a) for a in Action):
            raise Forbidden("this token's role is granted no action")


def _action(name: object, where: str) -> Action:
    try:
        return Action(name)
    except ValueError:
        raise BadInput(f"{where}: unknown action {name!r}; use emit, query or administer") from None

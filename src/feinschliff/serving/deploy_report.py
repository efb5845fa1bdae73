"""What a deploy did (``DeployReport``: the actions per server, printed by the CLI) and how it
fails (``DeployError``); shared by :mod:`feinschliff.serving.deploy` and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field


class DeployError(RuntimeError):
    """A server refused or failed; the registry's production alias was not moved."""


@dataclass
class Action:
    server: str
    op: str  # load | switch | unload | verify | write | remove | keep
    name: str
    detail: str = ""


@dataclass
class DeployReport:
    use_case: str
    production: str | None
    desired: dict[str, str] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    restart_needed: bool = False

    @property
    def changed(self) -> bool:
        return any(a.op not in ("verify", "keep") for a in self.actions)

    def lines(self) -> list[str]:
        out = [f"{a.server}: {a.op} {a.name} {a.detail}".rstrip() for a in self.actions]
        if self.restart_needed:
            out.append(
                f"resolver mode: restart the servers to switch {self.use_case} "
                "(pinned names are live now)"
            )
        return out or ["servers already match the registry"]

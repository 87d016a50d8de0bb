"""The one small context every tab module receives: the store, the scheduler, the component
catalog, and the few hooks a tab needs to reach the others (open a run in Runs, pollers that
run only while their tab is visible, named API endpoints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from jobs.store import RunStore
from memfactory_core.pipeline import component_catalog

if TYPE_CHECKING:
    from jobs.scheduler import Scheduler


@dataclass(frozen=True)
class TabSpec:
    """A tab of the workbench: its label, its id and the function that fills it."""

    label: str
    id: str
    register: Callable[[AppContext], None]


@dataclass
class AppContext:
    """What a tab module may use. ``register(ctx)`` runs inside the tab's ``gr.Tab``."""

    store: RunStore
    scheduler: Scheduler | None = None
    refresh_s: float = 2.0
    catalog: Callable[[], list[dict[str, Any]]] = component_catalog
    demo: gr.Blocks | None = None
    tabs: gr.Tabs | None = None
    #: components a tab offers to the others, by tab id then name
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)
    _pollers: list[tuple[str, gr.Timer]] = field(default_factory=list)
    _ready: list[Callable[[], None]] = field(default_factory=list)
    _tab_ids: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ hooks
    def poller(self, tab_id: str, timer: gr.Timer) -> gr.Timer:
        """Keep ``timer`` ticking only while tab ``tab_id`` is visible."""
        self._pollers.append((tab_id, timer))
        return timer

    def on_ready(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once every tab exists (to wire events that target another tab)."""
        self._ready.append(fn)

    def api(self, fn: Callable[..., Any]) -> None:
        """Expose ``fn`` as the named endpoint ``/<fn.__name__>`` (it needs type hints)."""
        gr.api(fn, api_name=fn.__name__)

    # ------------------------------------------------------- opening a run
    def open_run_outputs(self) -> list[Any]:
        """The components :meth:`open_run` updates, in order (outputs of an event)."""
        runs = self.shared.get("runs", {})
        if self.tabs is None or "run" not in runs:
            raise RuntimeError("the Runs tab is not built yet: wire this in ctx.on_ready")
        return [self.tabs, runs["run"], *self.timers_of("runs")]

    def open_run(self, run_id: int) -> list[Any]:
        """Updates that switch to Runs with ``run_id`` selected and its pollers on."""
        from app.tabs.runs import RUN_LIST_LIMIT, run_choices

        choices = run_choices(self.store.list_runs(limit=RUN_LIST_LIMIT))
        if run_id not in {c[1] for c in choices}:
            choices.append((f"#{run_id}", run_id))
        return [gr.Tabs(selected="runs"), gr.update(choices=choices, value=run_id),
                *[gr.Timer(active=True) for _ in self.timers_of("runs")]]

    def timers_of(self, tab_id: str) -> list[gr.Timer]:
        return [t for owner, t in self._pollers if owner == tab_id]

    # ----------------------------------------------------------- building
    def build_tabs(self, specs: list[TabSpec], selected: str | None = None) -> None:
        """Create every tab, run the ready hooks, then switch pollers with the visible tab."""
        selected = selected or specs[0].id
        created: list[tuple[TabSpec, gr.Tab]] = []
        with gr.Tabs(selected=selected) as tabs:
            self.tabs = tabs
            for spec in specs:
                self._tab_ids.append(spec.id)
                with gr.Tab(spec.label, id=spec.id) as tab:
                    spec.register(self)
                created.append((spec, tab))
        for fn in self._ready:
            fn()
        timers = [t for _, t in self._pollers]
        if not timers:
            return
        for owner, timer in self._pollers:
            timer.active = owner == selected
        for spec, tab in created:
            def switch(tab_id: str = spec.id) -> list[gr.Timer]:
                return [gr.Timer(active=owner == tab_id) for owner, _ in self._pollers]
            tab.select(switch, None, timers, show_progress="hidden", queue=False,
                       api_visibility="private")

"""Every notebook, run in JupyterLab in headless Chromium; every widget control moved.

What a learner does, done by Playwright: open the notebook, run its cells, look at the
outputs, move each control of each explorer. For each notebook in ``notebooks/`` this test

1. opens it in JupyterLab and runs its code cells in order in a fresh kernel
   (``notebook:run-cell``, the command behind the Run button), failing on the first cell
   whose output is an error, and on any widget that cannot be displayed;
2. finds every explorer in the page. Explorers are built by
   ``lora_lab._widgets.build_explorer``: a VBox whose last three children are
   [controls VBox, readout HTML, plot Output]. Every cell that calls a ``*_explorer(...)``
   function as its last expression must show one, and every widget control on the page
   must belong to an explorer (a control outside one would go unchecked, so it fails);
3. moves every control through the UI (slider: keyboard on its handle; checkbox: click;
   dropdown: select another option; toggle buttons / radio: click another option; a button
   (an explorer's Run): press it once;
   number box: arrow key + Enter), waits until the kernel has handled every message the
   move sent (no fixed sleeps), and asserts that the control's value, the readout text and
   the plot image (the PNG's base64 data) all changed. When a first move may legitimately
   leave the figures as they were (two optimizers with the same state size), it tries
   another option or a bigger step, at most ``MAX_ATTEMPTS`` moves;
4. saves screenshots into ``artifacts/browser/``: the whole notebook
   (``NN_name.png``, split into parts if very long) and each explorer after its last move
   (``NN_name__explorerK.png``), plus ``report.json`` with timings and what was moved.

New chapters are covered without editing this file: notebooks and explorers are
discovered. Which cells run: every cell up to and including the last explorer cell
(widgets may depend on any of them); after that, cells keep running while the notebook has
used less than ``LORA_LAB_BROWSER_BUDGET_S`` seconds (default 60), and a tail cell still
running when the budget ends is interrupted. On 2 idle cores every notebook of 00–04 runs
whole well within the budget; a long tail (a training run) is left to nbval, which
re-executes every cell of every notebook in the same ``make test``. Cells left out are
listed in a warning and in report.json. ``LORA_LAB_BROWSER_CELLS=all`` runs every cell
of every notebook in the browser.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
import warnings
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"  # git-ignored
NOTEBOOKS = sorted(p for p in (REPO / "notebooks").glob("*.ipynb") if not p.name.startswith("."))
BUDGET_S = float(os.environ.get("LORA_LAB_BROWSER_BUDGET_S", "60"))
RUN_ALL = os.environ.get("LORA_LAB_BROWSER_CELLS", "").strip().lower() == "all"
CELL_TIMEOUT_S = float(os.environ.get("LORA_LAB_BROWSER_CELL_TIMEOUT_S", "600"))
SETTLE_TIMEOUT_S = 120      # kernel must handle a control's messages within this
NOTHING_SENT_S = 5          # a move that sends no message to the kernel within this failed
MAX_SHOT_HEIGHT = 12_000    # px per screenshot part
EXPLORER_CALL = re.compile(r"\b\w+_explorer\s*\(")
CONTROL_CLASSES = ["widget-slider", "widget-checkbox", "widget-dropdown", "widget-toggle-buttons",  # ipywidgets 8
                   "widget-radio", "widget-select", "widget-select-multiple", "widget-text", "widget-textarea",
                   "widget-button", "widget-toggle-button", "widget-colorpicker", "widget-datepicker",
                   "widget-datetimepicker", "widget-timepicker", "widget-upload", "widget-play", "widget-controller"]

# Helpers installed once in the page (window.__lora). `panel` is the open notebook.
PAGE_HELPERS = r"""
() => {
  const CONTROL_SEL = %CONTROLS%;
  const isExplorer = (b) => {
    const k = [...b.children], n = k.length;
    return n >= 3 && k[n - 1].classList.contains('widget-output') && k[n - 2].classList.contains('widget-html')
        && k[n - 3].classList.contains('widget-vbox');
  };
  window.__lora = {
    panel: null,
    async open(path) {
      const app = window.jupyterapp;
      const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
      await panel.context.ready;
      await panel.sessionContext.ready;
      const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
      if (!kernel) throw new Error('no kernel started for ' + path);
      await kernel.info;
      app.shell.activateById(panel.id);
      this.panel = panel;
      this.sent = new Map();  // comm_msg id -> handled (kernel went idle for it)
      kernel.anyMessage.connect((_, {msg, direction}) => {
        if (direction === 'send' && msg.header.msg_type === 'comm_msg') this.sent.set(msg.header.msg_id, false);
        if (direction === 'recv' && msg.header.msg_type === 'status' && msg.content.execution_state === 'idle'
            && this.sent.has(msg.parent_header.msg_id)) this.sent.set(msg.parent_header.msg_id, true);
      });
      return {kernel: kernel.name, cells: panel.content.model.cells.length};
    },
    async runCell(i, timeoutMs) {
      const app = window.jupyterapp, nb = this.panel.content;
      app.shell.activateById(this.panel.id);
      nb.activeCellIndex = i;
      nb.deselectAll();
      const t0 = performance.now();
      this.running = app.commands.execute('notebook:run-cell');
      const done = await Promise.race([this.running, new Promise(r => setTimeout(() => r('timeout'), timeoutMs))]);
      const cell = nb.model.cells.get(i);
      const outputs = cell.outputs ? cell.outputs.toJSON() : [];
      const errors = outputs.filter(o => o.output_type === 'error')
                            .map(o => `${o.ename}: ${o.evalue}\n${(o.traceback || []).join('\n')}`
                                      .replace(/\x1b\[[0-9;]*m/g, ''));  // no ANSI colours in pytest's report
      const node = nb.widgets[i].node;
      const bad = node.textContent.match(/Error displaying widget[^\n]*|Failed to load model class[^\n]*/);
      if (bad) errors.push(bad[0]);
      return {done: done === 'timeout' ? 'timeout' : !!done, seconds: (performance.now() - t0) / 1000, errors,
              count: cell.executionCount};
    },
    explorers() {
      const nb = this.panel.content;
      const boxes = [...nb.node.querySelectorAll('.widget-vbox')].filter(isExplorer);
      boxes.forEach((b, k) => b.setAttribute('data-lora-explorer', String(k)));
      const cellOf = (el) => nb.widgets.findIndex(w => w.node.contains(el));
      const controls = [...nb.node.querySelectorAll(CONTROL_SEL)];
      const orphans = controls.filter(c => !boxes.some(b => b.contains(c)))
                              .map(c => `${c.className} in cell ${cellOf(c)}: ${c.textContent.trim().slice(0, 60)}`);
      return {explorers: boxes.map((b, k) => {
                const kids = [...b.children], ctl = kids[kids.length - 3];
                [...ctl.children].forEach((c, j) => c.setAttribute('data-lora-control', String(j)));
                return {index: k, cell: cellOf(b), controls: ctl.children.length,
                        title: kids.length > 3 ? kids[0].textContent.trim() : ''};
              }), orphans};
    },
    state(k, j) {
      const b = document.querySelector(`[data-lora-explorer="${k}"]`);
      const kids = [...b.children], n = kids.length;
      const c = kids[n - 3].children[j];
      const img = kids[n - 1].querySelector('img');
      let value;
      const handle = c.querySelector('.noUi-handle');
      if (handle) value = handle.getAttribute('aria-valuenow');
      else if (c.querySelector('select')) value = c.querySelector('select').value;
      else if (c.querySelector('input[type=checkbox]')) value = String(c.querySelector('input[type=checkbox]').checked);
      else if (c.querySelector('input[type=radio]')) value = (c.querySelector('input[type=radio]:checked') || {value: 'none'}).value;
      else if (c.querySelector('input')) value = c.querySelector('input').value;
      else if (c.querySelector('.mod-active')) value = c.querySelector('.mod-active').textContent;
      const readout = c.querySelector('.widget-readout');
      return {readout: kids[n - 2].innerText, plot: img ? img.src : null,
              plotErrors: kids[n - 1].querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"], .jp-OutputArea-output.jp-mod-error').length,
              value: value === undefined ? null : String(value) + (readout ? ' (' + readout.textContent + ')' : ''),
              rawValue: value === undefined ? null : String(value),
              label: [...c.querySelectorAll('.widget-label, .widget-label-basic')]
                .map(e => e.textContent.replace(/\u200b/g, '').trim()).find(Boolean) || c.textContent.trim().slice(0, 40),
              kind: c.className, pending: [...this.sent.values()].filter(v => !v).length, sent: this.sent.size};
    },
    async interrupt() {  // stop the running cell (the budget ran out); wait until the kernel is free
      await this.panel.sessionContext.session.kernel.interrupt();
      await Promise.race([this.running, new Promise(r => setTimeout(r, 60000))]);
    },
    async close() {
      const p = this.panel;
      this.panel = null;
      if (!p) return;
      await p.sessionContext.shutdown();
      p.dispose();
    },
  };
}
""".replace("%CONTROLS%", json.dumps(", ".join("." + c for c in CONTROL_CLASSES)))


def _strip_magics(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def shows_explorer(source: str) -> bool:
    """True if the cell calls a ``*_explorer(...)`` builder and ends with an expression (so displays it)."""
    if not EXPLORER_CALL.search(source):
        return False
    try:
        body = ast.parse(_strip_magics(source)).body
    except SyntaxError:
        return False
    last = body[-1] if body else None
    if not isinstance(last, ast.Expr):
        return False
    call = last.value
    return not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print")


def cells_to_run(nb) -> tuple[list[int], int]:
    """Indices of code cells, and the index of the last cell that displays an explorer (-1 if none)."""
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    shows = [i for i in code if shows_explorer(nb.cells[i].source)]
    return code, (shows[-1] if shows else -1)


def _report(name: str, entry: dict) -> None:
    path = ARTIFACTS / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[name] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


MAX_ATTEMPTS = 3  # e.g. a dropdown whose next option happens to give the same figures: try another


def move(page, k: int, j: int, before: dict, attempt: int) -> bool:
    """Move control j of explorer k through the UI, the way a learner would; False if no move is left.

    ``attempt`` 0 is the first move; later attempts pick another option (dropdown, toggle, radio)
    or a bigger step (slider, number box), for controls whose first move may legitimately leave
    the figures unchanged (two optimizer presets with the same state size, say).
    """
    control = page.locator(f'[data-lora-explorer="{k}"] > .widget-vbox > [data-lora-control="{j}"]')
    kind = before["kind"]

    def pick(others: list, do) -> bool:
        if attempt >= len(others):
            return False
        do(others[attempt])
        return True

    if "widget-slider" in kind:
        handle = control.locator(".noUi-handle").first
        now, hi = (float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemax"))
        keys = ["PageUp", "End"] if now < hi else ["PageDown", "Home"]  # several steps, then the far end
        if attempt >= len(keys):
            return False
        handle.focus()
        handle.press(keys[attempt])
        return True
    if "widget-checkbox" in kind:
        return pick([None], lambda _: control.locator("input[type=checkbox]").click())
    if "widget-button" in kind:  # a Run button: pressed once; what it computes must show
        return pick([None], lambda _: control.click())
    if "widget-dropdown" in kind or "widget-select" in kind:
        select = control.locator("select")
        options = select.locator("option").evaluate_all("os => os.map(o => o.value)")
        return pick([o for o in options if o != before["rawValue"]], select.select_option)
    if "widget-toggle-buttons" in kind:
        buttons = control.locator("button")
        others = [i for i in range(buttons.count()) if "mod-active" not in (buttons.nth(i).get_attribute("class") or "")]
        return pick(others, lambda i: buttons.nth(i).click())
    if "widget-radio" in kind:
        radios = control.locator("input[type=radio]")
        others = [i for i in range(radios.count()) if radios.nth(i).get_attribute("value") != before["rawValue"]]
        return pick(others, lambda i: radios.nth(i).click())
    if "widget-text" in kind and control.locator("input[type=number]").count():
        def step(key):
            box = control.locator("input[type=number]")
            box.focus()
            for _ in range(1 + 4 * attempt):
                box.press(key)
            box.press("Enter")
        return pick(["ArrowUp", "ArrowUp"], step)
    raise AssertionError(f"the browser test does not know how to move a control of class {kind!r} "
                         f"({before['label']!r}); teach move() in {Path(__file__).name}")


def wait_until_handled(page, k: int, j: int, before: dict) -> dict:
    """Wait until the kernel has handled every message the move sent and the page has redrawn."""
    t0, settled_since = time.monotonic(), None
    while True:
        state = page.evaluate("([k, j]) => window.__lora.state(k, j)", [k, j])
        now = time.monotonic()
        if state["sent"] == before["sent"] and now - t0 > NOTHING_SENT_S:
            return state  # the move reached no kernel; the caller says what did not change
        changed = state["readout"] != before["readout"] and state["plot"] not in (None, before["plot"])
        if state["sent"] > before["sent"] and state["pending"] == 0:  # kernel idle for every message sent
            if changed:
                return state
            settled_since = settled_since or now
            if now - settled_since > 2:  # grace for the last redraw after the kernel went idle
                return state
        else:
            settled_since = None
        if now - t0 > SETTLE_TIMEOUT_S:
            return state
        time.sleep(0.15)


def screenshot_explorer(page, k: int, path: Path) -> None:
    """Screenshot one explorer whole: a window tall enough for it, the explorer scrolled to the top."""
    selector = f'[data-lora-explorer="{k}"]'
    height = page.evaluate("(s) => document.querySelector(s).getBoundingClientRect().height", selector)
    page.set_viewport_size({"width": 1280, "height": min(MAX_SHOT_HEIGHT, int(height) + 300)})
    page.evaluate("(s) => document.querySelector(s).scrollIntoView({block: 'start'})", selector)
    page.wait_for_timeout(300)
    page.locator(selector).screenshot(path=str(path))
    page.set_viewport_size({"width": 1280, "height": 900})


def screenshot_notebook(page, path: Path) -> list[str]:
    """Screenshot the whole notebook: make the window as tall as the notebook (in parts if huge)."""
    height = page.evaluate("() => window.__lora.panel.content.outerNode.scrollHeight")
    shots, top = [], 0
    while top < height:
        part_h = min(MAX_SHOT_HEIGHT, height - top)
        page.set_viewport_size({"width": 1280, "height": part_h + 120})
        page.evaluate("(y) => { window.__lora.panel.content.outerNode.scrollTop = y; }", top)
        page.wait_for_timeout(400)
        name = path.name if top == 0 else f"{path.stem}_part{len(shots) + 1}.png"
        page.screenshot(path=str(path.parent / name))
        shots.append(name)
        top += MAX_SHOT_HEIGHT
    page.set_viewport_size({"width": 1280, "height": 900})
    return shots


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_widgets_respond(lab_page, notebook: Path):
    page, t_start = lab_page, time.monotonic()
    nb = nbformat.read(notebook, as_version=4)
    code_cells, last_explorer_cell = cells_to_run(nb)
    page.evaluate(PAGE_HELPERS)
    rel = notebook.relative_to(REPO).as_posix()
    entry: dict = {"cells_run": [], "cells_not_run": [], "explorers": []}
    try:
        opened = page.evaluate("(p) => window.__lora.open(p)", rel)
        assert opened["cells"] == len(nb.cells), f"JupyterLab shows {opened['cells']} cells, the file has {len(nb.cells)}"

        # 1. run the cells, in order, in the browser's kernel
        for i in code_cells:
            used = time.monotonic() - t_start
            tail = not RUN_ALL and i > last_explorer_cell  # no widget depends on this cell
            if tail and used > BUDGET_S:
                entry["cells_not_run"] = [c for c in code_cells if c >= i]
                break
            timeout = BUDGET_S - used if tail else CELL_TIMEOUT_S
            r = page.evaluate("([i, ms]) => window.__lora.runCell(i, ms)", [i, timeout * 1000])
            if tail and r["done"] == "timeout":  # a long tail cell (training): stop it, leave it to nbval
                page.evaluate("() => window.__lora.interrupt()")
                entry["cells_not_run"] = [c for c in code_cells if c >= i]
                entry["interrupted_cell"] = i
                break
            entry["cells_run"].append({"cell": i, "seconds": round(r["seconds"], 2)})
            first_line = nb.cells[i].source.strip().splitlines()[0][:80]
            assert r["done"] != "timeout", f"{notebook.name} cell {i} ({first_line!r}) ran over {CELL_TIMEOUT_S:.0f} s"
            assert not r["errors"], (f"{notebook.name} cell {i} ({first_line!r}) shows an error in the browser:\n"
                                     + "\n".join(r["errors"])[-4000:])
            assert r["done"] is True and r["count"] is not None, f"{notebook.name} cell {i} did not run: {r}"
        entry["run_seconds"] = round(time.monotonic() - t_start, 1)

        # 2. find the explorers; every displayed explorer and every control must be found
        found = page.evaluate("() => window.__lora.explorers()")
        assert not found["orphans"], (f"{notebook.name}: widget controls outside any build_explorer() box "
                                      f"(the browser test cannot check them): {found['orphans']}")
        cells_with = {e["cell"] for e in found["explorers"]}
        expected = [i for i in code_cells if shows_explorer(nb.cells[i].source)]
        missing = [i for i in expected if i not in cells_with]
        assert not missing, f"{notebook.name}: cells {missing} display an explorer, but none rendered in the browser"

        # 3. move every control of every explorer; readout and plot must both change
        failures = []
        for ex in found["explorers"]:
            assert ex["controls"] > 0, f"{notebook.name}: explorer {ex['index']} ({ex['title']!r}) has no controls"
            moved = []
            for j in range(ex["controls"]):
                before = page.evaluate("([k, j]) => window.__lora.state(k, j)", [ex["index"], j])
                assert before["plot"], (f"{notebook.name}: explorer {ex['title']!r} (cell {ex['cell']}) shows no "
                                        "plot image before any move")
                after, nothing_sent, sent_mark = None, False, before["sent"]
                for attempt in range(MAX_ATTEMPTS):
                    if not move(page, ex["index"], j, before, attempt):
                        break
                    after = wait_until_handled(page, ex["index"], j, {**before, "sent": sent_mark})
                    nothing_sent, sent_mark = after["sent"] == sent_mark, after["sent"]
                    if nothing_sent or (after["readout"] != before["readout"]
                                        and after["plot"] not in (None, before["plot"])):
                        break
                what = f"{notebook.name}: explorer {ex['title']!r} (cell {ex['cell']}), control {before['label']!r}"
                problems = []
                if nothing_sent:
                    problems.append("moving it sent nothing to the kernel")
                if after["pending"]:
                    problems.append(f"the kernel did not handle the move within {SETTLE_TIMEOUT_S} s")
                if after["value"] == before["value"] and "widget-button" not in before["kind"]:
                    problems.append(f"its value did not change (still {before['value']})")
                if after["readout"] == before["readout"]:
                    problems.append(f"the readout did not change (still {before['readout']!r})")
                if after["plot"] is None:
                    problems.append("the plot disappeared")
                elif after["plot"] == before["plot"]:
                    problems.append("the plot image did not change")
                if after["plotErrors"]:
                    problems.append("the plot area shows an error")
                if problems:
                    failures.append(f"{what} moved {before['value']} -> {after['value']}: " + "; ".join(problems))
                moved.append({"control": before["label"], "from": before["value"], "to": after["value"],
                              "ok": not problems})
            screenshot_explorer(page, ex["index"], ARTIFACTS / f"{notebook.stem}__explorer{ex['index']}.png")
            entry["explorers"].append({"title": ex["title"], "cell": ex["cell"], "controls": moved})

        # 4. the whole notebook, after the moves
        entry["screenshots"] = screenshot_notebook(page, ARTIFACTS / f"{notebook.stem}.png")
        assert not failures, "widgets did not respond in the browser:\n" + "\n".join(failures)
    finally:
        entry["total_seconds"] = round(time.monotonic() - t_start, 1)
        _report(notebook.name, entry)
        page.evaluate("() => window.__lora && window.__lora.close()")
    if entry["cells_not_run"]:
        warnings.warn(f"{notebook.name}: cells {entry['cells_not_run']} (after its last explorer) were not run in "
                      f"the browser: over the {BUDGET_S:.0f} s budget (nbval runs them; LORA_LAB_BROWSER_CELLS=all "
                      "runs them here too)", stacklevel=1)

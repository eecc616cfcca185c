"""Where each defense's default settings come from: the paper, a reconstruction, or a development search.

A defense's card may declare ``settings`` (:class:`bench.card.DefenseCard`): for each parameter its
source (:data:`bench.card.SETTING_SOURCES`) and a note. :func:`settings_frame` lists them beside
the default values the plug-in's ``Params`` give today and the values of its named presets (e.g.
``spec-v1``, the first reconstruction), so a reader of the variants table sees which numbers are
the paper's and which were chosen here, and how.
"""
from __future__ import annotations

import pandas as pd

from bench.card import SETTING_SOURCES
from bench.reports.tables import markdown_table
from bench.reports.tidy import card, label

COLUMNS = ["Defense", "Parameter", "Default", "Source", "How it was chosen", "Presets"]


def settings_frame(defenses) -> pd.DataFrame:
    """One row per declared setting of each of ``defenses`` (registered names; those whose card
    declares none are left out): its default value(s), source, note and, where a preset changes
    it, the preset's value."""
    from bench.registry import DEFENSES, params_to_dict

    rows = []
    for name in defenses:
        c = card("defense", name)
        if c is None or not getattr(c, "settings", None):
            continue
        entry = DEFENSES.get(name)
        defaults = params_to_dict(entry.make_params())
        presets = {preset: params_to_dict(entry.make_params(preset=preset))
                   for preset in sorted(getattr(entry.obj, "presets", {}) or {})}
        for key, (source, note) in c.settings.items():
            params = [p.strip() for p in key.split(",")]
            changed = [f"{preset}: " + ", ".join(f"{p}={values[p]}" for p in params)
                       for preset, values in presets.items() if any(values[p] != defaults[p] for p in params)]
            rows.append({"Defense": label("defense", name), "Parameter": ", ".join(params),
                         "Default": ", ".join(f"{defaults[p]}" for p in params), "Source": source,
                         "How it was chosen": note, "Presets": "; ".join(changed)})
    return pd.DataFrame(rows, columns=COLUMNS)


def settings_markdown(frame: pd.DataFrame) -> str:
    """The settings table with the sources explained above it."""
    legend = "\n".join(f"- **{source}**: {meaning}" for source, meaning in SETTING_SOURCES.items())
    if frame.empty:
        return "No defense in these results declares where its settings come from.\n"
    return (f"Where each default setting comes from:\n\n{legend}\n\n"
            + markdown_table(frame, missing=""))

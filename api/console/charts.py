"""Bar charts as data for an SVG the template draws (no script, no library): one bar per day,
its value in a ``data-value`` attribute and a ``<title>``, the same numbers as the table
beneath it."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT, PAD = 720, 160, 4


@dataclass(frozen=True, slots=True)
class Bar:
    day: str
    value: float
    label: str
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Chart:
    name: str
    title: str
    bars: tuple[Bar, ...]
    top: str  # the tallest bar's value, as the axis shows it
    width: int = WIDTH
    height: int = HEIGHT


def _label(value: float, money: bool) -> str:
    if money:
        return f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"
    return f"{int(value):,}"


def bar_chart(name: str, title: str, series: list[tuple[str, float]], money: bool = False) -> Chart:
    top = max((v for _, v in series), default=0) or 1
    slot = WIDTH / max(len(series), 1)
    bars = []
    for i, (day, value) in enumerate(series):
        h = (HEIGHT - 2 * PAD) * value / top
        bars.append(Bar(day, value, _label(value, money), x=round(i * slot + slot * 0.1, 2),
                        y=round(HEIGHT - PAD - h, 2), width=round(max(slot * 0.8, 1), 2), height=round(h, 2)))
    return Chart(name, title, tuple(bars), _label(top if any(v for _, v in series) else 0, money))

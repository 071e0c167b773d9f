"""The digest as people read it: its lines, one chart image, and the mail's HTML and text, a PDF, a CSV.

Every format shows the same `lines()`, formatted once here, so the mail, the
PDF and the CSV cannot disagree about a figure or its wording.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from django.template.loader import render_to_string
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont

from metrics_app.digests.selectors import WEEKDAYS, Change, Digest
from metrics_app.rules import spreadsheet_text

NO_HOURS = "no opening hours set"
NO_BOOKINGS = "no bookings"


@dataclass(frozen=True)
class Line:
    """One figure of the digest: its key, label, this week's value (and last week's, for the compared ones)."""

    key: str
    label: str
    value: int | float | None
    shown: str
    previous: int | None = None
    previous_shown: str = ""
    change_shown: str = ""


def count(value: int) -> str:
    return f"{value:,}"


def usd(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"${value:,.4f}"


def change(figure: Change) -> str:
    """'+3 (+12.5%)', '-2 (-10.0%)', '+5 (none last week)' or 'no change'."""
    if figure.difference == 0:
        return "no change"
    if figure.percent is None:
        return f"{figure.difference:+,} (none last week)"
    return f"{figure.difference:+,} ({figure.percent:+.1f}%)"


def _compared(key: str, label: str, figure: Change) -> Line:
    return Line(key, label, figure.current, count(figure.current), figure.previous, count(figure.previous),
                change(figure))


def lines(digest: Digest) -> list[Line]:
    """The digest's figures, in the order every format shows them."""
    hours = digest.after_hours

    def after(value: int) -> tuple[int | None, str]:
        return (value, count(value)) if hours.hours_set else (None, NO_HOURS)

    return [
        _compared("replies", "Replies", digest.replies),
        _compared("conversations", "Conversations", digest.conversations),
        _compared("bookings", "Bookings (booked conversations)", digest.bookings),
        Line("after_hours_conversations", "After hours: conversations", *after(hours.conversations)),
        Line("after_hours_requests", "After hours: booking requests", *after(hours.requests)),
        Line("after_hours_bookings", "After hours: bookings", *after(hours.bookings)),
        Line("handoffs", "Handoffs to a person (conversations)", digest.handoffs, count(digest.handoffs)),
        Line("cost_usd", "Cost (USD)", digest.cost_usd, usd(digest.cost_usd)),
        Line("cost_per_booking_usd", "Cost per booking (USD)", digest.cost_per_booking_usd,
             usd(digest.cost_per_booking_usd, NO_BOOKINGS)),
        Line("unpriced_replies", "Replies without a price (not in the cost)", digest.unpriced_replies,
             count(digest.unpriced_replies)),
    ]


def title(digest: Digest) -> str:
    return f"Weekly digest: {digest.business_name}, {digest.week_start:%d %b %Y} to {digest.week_end:%d %b %Y}"


# --- The chart: replies per day of the week, last week's bar beside this week's.

WIDTH, HEIGHT = 640, 280
_THIS_WEEK, _LAST_WEEK, _INK, _GRID = (43, 108, 176), (176, 183, 195), (33, 37, 41), (222, 226, 230)
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 40, 36


def chart_png(digest: Digest) -> bytes:
    """A PNG of the replies per local day, Monday first: last week (grey) beside this week (blue)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((_LEFT, 10), "Replies per day", fill=_INK, font=font)
    for at, colour, name in ((WIDTH - 230, _LAST_WEEK, "last week"), (WIDTH - 120, _THIS_WEEK, "this week")):
        draw.rectangle((at, 12, at + 12, 24), fill=colour)
        draw.text((at + 18, 10), name, fill=_INK, font=font)
    highest = max((*digest.replies_by_day, *digest.previous_replies_by_day, 1))
    plot_height = HEIGHT - _TOP - _BOTTOM
    base = HEIGHT - _BOTTOM
    for tick in range(5):
        y = base - plot_height * tick // 4
        draw.line((_LEFT, y, WIDTH - _RIGHT, y), fill=_GRID)
        draw.text((6, y - 6), f"{highest * tick / 4:,.0f}", fill=_INK, font=font)
    slot = (WIDTH - _LEFT - _RIGHT) / 7
    bar = slot * 0.35
    for day, name in enumerate(WEEKDAYS):
        x = _LEFT + slot * day + slot * 0.15
        for offset, value, colour in ((0.0, digest.previous_replies_by_day[day], _LAST_WEEK),
                                      (bar, digest.replies_by_day[day], _THIS_WEEK)):
            top = base - plot_height * value / highest
            if value:
                draw.rectangle((x + offset, top, x + offset + bar - 2, base), fill=colour)
        draw.text((x + bar - 8, base + 8), name, fill=_INK, font=font)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


# --- The mail's parts.


def html(digest: Digest, chart_src: str) -> str:
    """The digest as an HTML page; `chart_src` is where its chart image is (a cid: in the mail)."""
    return render_to_string("metrics_app/digest/weekly.html", _context(digest, chart_src=chart_src))


def text(digest: Digest) -> str:
    return render_to_string("metrics_app/digest/weekly.txt", _context(digest))


def _context(digest: Digest, **extra: Any) -> dict[str, Any]:
    return {"digest": digest, "title": title(digest), "lines": lines(digest),
            "hours_set": digest.after_hours.hours_set, **extra}


# --- Downloads.


def _latin1(value: str) -> str:
    # The PDF's core font covers Latin-1 only; other characters (a business's name in another script) show as ?.
    return value.encode("latin-1", "replace").decode("latin-1")


def pdf(digest: Digest, chart: bytes | None = None) -> bytes:
    """The digest as a one-page PDF: title, the figures' table, the chart."""
    document = FPDF(format="A4")
    document.set_title(_latin1(title(digest)))
    document.set_creator("MLOps service for AI receptionists")
    document.add_page()
    document.set_font("Helvetica", "B", 14)
    document.multi_cell(0, 8, _latin1(title(digest)), new_x="LMARGIN", new_y="NEXT")
    document.set_font("Helvetica", "", 9)
    document.cell(0, 6, _latin1(f"Business id {digest.business_id}; Monday to Sunday in {digest.tz} "
                                f"({digest.starts.isoformat()} to {digest.ends.isoformat()})"),
                  new_x="LMARGIN", new_y="NEXT")
    document.ln(3)
    widths = (80, 32, 32, 46)
    document.set_font("Helvetica", "B", 10)
    for width, heading in zip(widths, ("Figure", "This week", "Last week", "Change"), strict=True):
        document.cell(width, 7, heading, border="B")
    document.ln()
    document.set_font("Helvetica", "", 10)
    for line in lines(digest):
        for width, cell in zip(widths, (line.label, line.shown, line.previous_shown, line.change_shown), strict=True):
            document.cell(width, 7, _latin1(cell))
        document.ln()
    document.ln(4)
    document.image(io.BytesIO(chart or chart_png(digest)), w=170)
    return bytes(document.output())


CSV_HEADER = ("figure", "label", "this_week", "last_week", "change")


def csv_text(digest: Digest) -> str:
    """The digest as CSV: who and which week, then one row per figure (exact values) and per day's replies."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for key, label, value in (("business_id", "Business id", digest.business_id),
                              ("business", "Business", digest.business_name),
                              ("time_zone", "Time zone", digest.tz),
                              ("week_start", "Week from (Monday)", digest.week_start.isoformat()),
                              ("week_end", "Week to (Sunday)", digest.week_end.isoformat())):
        writer.writerow((key, label, spreadsheet_text(value), "", ""))
    for line in lines(digest):
        difference = None if line.previous is None or line.value is None else int(line.value) - line.previous
        writer.writerow((line.key, line.label, *("" if cell is None else cell
                                                 for cell in (line.value, line.previous, difference))))
    for day, name in enumerate(WEEKDAYS):
        current, previous = digest.replies_by_day[day], digest.previous_replies_by_day[day]
        writer.writerow((f"replies_{name.lower()}", f"Replies on {name}", current, previous, current - previous))
    return out.getvalue()

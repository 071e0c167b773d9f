"""The sentiment of a customer's message: VADER's compound score, from the lexicon its package ships.

The analyzer reads vader_lexicon.txt and emoji_utf8_lexicon.txt from the
vaderSentiment package's own folder once, when first used; scoring is pure
Python and never touches the network. Only the score leaves this module: the
caller drops the text.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

# VADER's cost grows faster than the text: measured 10-70 us for a 40-120 character message,
# 0.2-0.8 ms at 500 characters, 0.6-2.3 ms at 1,000 and 3.4-7.3 ms at 2,000. A chat message is
# mostly far shorter; its first 1,000 characters carry its tone and keep a batch's scoring bounded.
SCORED_CHARACTERS = 1_000


@functools.cache
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()  # ~0.1 s to read the lexicons: once per process


def score(text: str) -> Decimal:
    """VADER's compound score of the first SCORED_CHARACTERS of `text`: -1 (very negative) to +1 (very positive).

    VADER rounds it to four decimals, the stored column's precision.
    """
    compound = _analyzer().polarity_scores(text[:SCORED_CHARACTERS])["compound"]
    return Decimal(repr(compound))

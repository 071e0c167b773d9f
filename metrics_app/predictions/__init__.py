"""Likely bookings: a per-business logistic regression on conversation prefixes, its evaluation and follow-ups.

`features.py` (what is known after each turn), `model.py` (the regression and
its scores), `services.py` (training and storing), `selectors.py` (the latest
evaluation and the conversations worth a follow-up), `schedule.py` (the
worker's daily retraining). Definitions: docs/analytics.md, "Likely bookings".
"""

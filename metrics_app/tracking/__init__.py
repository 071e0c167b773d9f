"""MLflow: the knowledge-base pipeline's runs and each version's live figures, for operators.

`client.py` connects (and is all that documents_app uses); `live.py` logs the
daily figures per business; `schedule.py` puts that on the worker's schedule.
mlflow-skinny is optional (requirements-mlflow.txt) and imported only here, when
MLFLOW_TRACKING_URI is set.
"""

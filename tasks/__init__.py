"""Steps of a production active-learning round, and their Prefect task wrappers."""

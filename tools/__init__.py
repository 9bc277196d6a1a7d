"""Developer commands that the Makefile runs outside the pipeline's ML environment (``make airflow``)."""

"""The shoprec command line: one face over the stages; the Airflow DAG tasks call the same functions."""

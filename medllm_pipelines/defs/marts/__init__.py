"""Curated data products from the dbt project (dbt/): staging views -> intermediate -> mart tables."""

"""The operator's side: query statistics, /metrics, the dashboard, query logs."""

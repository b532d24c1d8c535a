"""Budgets: the spend ledger, the reserve/settle stage and the alerts."""

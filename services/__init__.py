"""Services shared by the API, the worker and the shell: jobs, accounts, audit logs, Temporal, config."""

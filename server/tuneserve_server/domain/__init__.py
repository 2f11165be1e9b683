"""The types every layer shares: jobs, their states, events and progress; task types;
adapter and dataset records; names and namespaces; limits; domain errors.

Imports nothing else of the server, so storage/, engine/, training/ and api/ can all
depend on it without depending on each other."""

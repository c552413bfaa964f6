"""
The benchmark harness: C{python -m sixchat.bench} measures sixchat side by side with Twisted
TLS 1.3, XMPP-style stanzas over TLS and plain TCP, in one run, and reports medians and
same-run ratios. Method and results: C{docs/benchmarks.md}; usage: C{benchmarks/README.md}.

Layout: L{cli} (options, orchestration, output), L{results} (medians, ratios, the report's
keys; pure), L{proc} (worker processes), L{worker} (their entry point), L{peers},
L{registry}, L{agents} (the worker roles), L{baselines} (TLS and XMPP as a Twisted user
builds them), L{fixtures} (certificates), L{plot} (optional chart).
"""

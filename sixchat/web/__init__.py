"""
The agent's web UI (C{twistd sixchat … --web ENDPOINT}, C{sixchat web}): a page served by the
agent itself over C{twisted.web}, on the agent's own API. L{server} (the service, the link
file, the resource tree), L{security} (token, cookie, Host, Origin, CSRF, headers: the rules,
once), L{api} (the JSON API), L{stream} (live events); C{static/} holds the page's hand-written
HTML, script and style. docs/web.md describes it.
"""

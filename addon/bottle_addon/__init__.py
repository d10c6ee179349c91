"""bottle's mitmproxy addon: every decrypted request gets pipelock's verdict before it goes on.

The modules split pure decisions (`verdict`, `policy`, `credentials`) from I/O (`scanner`,
`record`) and from mitmproxy glue (`hooks`), so the decisions are testable as plain functions.
"""

"""
The agent's file transfer (spec §8.7): L{disk} (the files directory, partial files, blocking,
run in threads), L{receiving} (L{FileInbox}: offers, chunks, resume, receipts) and
L{sending} (L{FileOutbox}: offers and streams files the outbox delivers). The protocol rules
are L{sixchat.filetransfer}; the rows are L{sixchat.agent.store.files}.
"""

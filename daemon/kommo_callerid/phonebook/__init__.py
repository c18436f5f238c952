"""The local phone book: a SQLite mirror of Kommo's phone owners, synced in the background."""

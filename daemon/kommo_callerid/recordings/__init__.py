"""Call recordings: signed links in the journal, served by the public endpoint."""

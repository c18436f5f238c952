"""The Kommo side: the API client, its HTTP transport, OAuth and token storage, the shared rate
limit and the parsing of Kommo JSON. Raw JSON never leaves this room: typed results do."""

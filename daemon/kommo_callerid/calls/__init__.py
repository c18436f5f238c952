"""Pure call logic: which channel is an inbound caller, who rings, who is notified. No I/O,
no asyncio, no Kommo or AMI imports: decisions in, decisions out."""

"""The Asterisk side: AMI wire protocol (panoramisk, wrapped), one client per session, and the
supervisor that keeps a link up. Raw AMI messages never leave this room: typed events do."""

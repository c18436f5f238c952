"""Click-to-call: who may dial what (tokens, extensions, numbers, pace); no HTTP, no AMI."""

"""Developer tooling that lives beside the packages (provisioning, not shipped)."""

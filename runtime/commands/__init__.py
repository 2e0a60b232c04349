"""One module per `cvahash` command; see cvahash.cli for the contract."""

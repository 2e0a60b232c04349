"""One module per `cvahash` command; see cvahash.cli for the contract.

Every command imports what it runs inside its ``run`` function, not at the top: lazy,
so that `cvahash --help` (which imports every command module to list it) stays fast,
and so that the workstation commands (train, export, eval, synth, bundle verify) load
``cvahash.export`` (torch) only when they run, with a message naming
``pip install '.[export]'`` when it is missing. That is the only reason for the
function-local imports here.
"""

"""``voxswitch eval``: simulated callers that test an agent over real SIP.

* :mod:`switch.eval.suite`: suite files (YAML) into validated dataclasses.
* :mod:`switch.eval.marked_yaml`: YAML read with the line of every value, for errors
  that name the line and the field.
"""

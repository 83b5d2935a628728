"""Pure numpy weight arithmetic used by the passes (one topic a module).

Every function here takes and returns numpy arrays, never mutates its
arguments and knows nothing about the IR, so each can be unit-tested against
an independent computation (usually torch's own layer).
"""

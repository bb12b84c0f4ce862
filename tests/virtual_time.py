"""The tests' virtual clock: the public `rate_limited_processor.testing`, under the name the tests import."""

from rate_limited_processor.testing import Deadlock, VirtualTimeLoop, run_virtual, virtual_time

__all__ = ["Deadlock", "VirtualTimeLoop", "run_virtual", "virtual_time"]

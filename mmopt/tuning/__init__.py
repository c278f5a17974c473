"""Tuning: MetaSchedule on local or farm devices, target-aware tuning databases, the device farm."""

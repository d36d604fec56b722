# st2common.runners: the base class of Python actions (base_action).

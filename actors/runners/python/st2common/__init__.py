# Squall's stand-in for the parts of StackStorm's st2common package that
# pack code imports. Only what actions and sensors use is here; the rest
# of st2common (database, message queue, API models) has no meaning
# outside StackStorm's own services.

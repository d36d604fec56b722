# st2common.services: the datastore client of action_service and
# sensor_service (datastore).

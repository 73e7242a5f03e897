"""Reading the users' data formats, splitting them and feeding batches to the devices."""

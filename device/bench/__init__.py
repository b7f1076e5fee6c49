"""``make bench`` for the appliance: it against a bare durable peer (``__main__``), the
peer itself (``peer``), the clients (``load``) and the server processes (``servers``)."""

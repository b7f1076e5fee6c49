def test_fails_on_purpose(page, start_appliance):
    server = start_appliance()
    page.goto(server.url + "/")
    assert page.url.endswith("/nowhere")

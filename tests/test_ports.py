"""Ports for local servers: distinct, free, and a head refused when two of its servers share one."""
import socket

import pytest

from infra.stack import StackError, free_ports, start_ray


def test_free_ports_are_distinct_and_free():
    for _ in range(20):  # one bind at a time handed the same port out twice, and a Ray head refused to start
        ports = free_ports(8)
        assert len(set(ports)) == 8
        for p in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))  # nothing holds it any more


def test_free_ports_avoid_the_ports_given():
    taken = free_ports(4)
    for _ in range(20):
        assert not set(free_ports(4, avoid=tuple(taken))) & set(taken)


def test_a_ray_head_with_one_port_for_two_servers_is_refused_before_anything_starts(tmp_path):
    (port,) = free_ports(1)
    with pytest.raises(StackError, match=rf"^--ray-port and --dashboard-port are both {port}: "):
        start_ray(tmp_path / "state", port=port, dashboard_port=port)
    assert not (tmp_path / "state").exists()

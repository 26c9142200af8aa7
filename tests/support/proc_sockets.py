"""Listening TCP sockets and descendants of a process, read from /proc (Linux, no psutil).

Why /proc: the tests must see what the kernel says a process listens on, whichever library
opened the socket (Ray's C++ gRPC servers, its Python agents, our metrics server).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

LISTEN = "0A"  # TCP state code in /proc/net/tcp


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # zombies hold no sockets and are gone once reaped
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def listening(pids: list[int]) -> dict[int, list[tuple[str, int]]]:
    """pid -> [(address, port)] of its listening TCP sockets (IPv4 and IPv6)."""
    sockets = _listening_inodes()
    result: dict[int, list[tuple[str, int]]] = {}
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # gone, or not ours
            continue
        inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
        mine = [sockets[inode] for inode in inodes if inode in sockets]
        if mine:
            result[pid] = sorted(mine)
    return result


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "(gone)"


def _listening_inodes() -> dict[str, tuple[str, int]]:
    found = {}
    for name, size in (("tcp", 4), ("tcp6", 16)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            address, port = fields[1].split(":")
            found[fields[9]] = (_address(address, size), int(port, 16))
    return found


def _address(hexed: str, size: int) -> str:
    """/proc/net/tcp prints each 32-bit word of the address in host (little-endian) order."""
    raw = bytes.fromhex(hexed)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
    return str(ipaddress.ip_address(words))

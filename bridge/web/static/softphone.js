// voicebridge softphone: one WebRTC call to the bridge, no build step.
//
// Signalling: POST /webrtc/token for a single-use call token (the operator's session and
// its CSRF token, or nothing when the bridge's softphone is public), then one
// POST /webrtc/offer with it and a complete offer (ICE gathered first).
// Data channels: "dtmf" (one message per key), "bye" (hang-up both ways), "events" (the
// bridge's call events: transcript, DTMF, barge-in, tool calls, end of call).
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"), called: $("called"), mic: $("mic"), call: $("call"),
    hangup: $("hangup"), mute: $("mute"), info: $("info"), transcript: $("transcript"),
    levelIn: $("level-in"), levelOut: $("level-out"), remote: $("remote"),
    keys: Array.from(document.querySelectorAll("#keypad .key")),
  };

  const phone = {
    state: "idle", callId: null, codec: null, pc: null, stream: null, channels: {},
    events: [], dtmfSent: "", audioContext: null, meters: null, error: null,
  };
  window.softphone = phone;   // for people poking in the console, and for tests

  const STATE_LABELS = {
    idle: "ready", connecting: "calling…", connected: "in call", ended: "call ended",
    error: "could not call",
  };

  // What went wrong, in words a newcomer can act on (err.name is the DOMException name).
  function explain(err) {
    const name = (err && err.name) || "";
    if (name === "NotAllowedError" || name === "SecurityError") {
      return "The browser blocked the microphone. Allow microphone access for this page " +
             "(the icon in the address bar), then press Call again.";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      return "No microphone found (or the chosen one is gone). Connect one or pick " +
             "another in the list, then press Call again.";
    }
    if (name === "NotReadableError") {
      return "The microphone is in use by another program or could not be opened.";
    }
    if (name === "NoMicrophoneApi") {
      return "This browser only gives a page the microphone over https:// or on " +
             "http://localhost. Open the page that way (or put the bridge behind https).";
    }
    if (name === "NeedsLogin") {
      return "Calls from this page need the operator's login: open the dashboard login URL " +
             "that voicebridge serve printed (or /login?token=...), then come back and press Call.";
    }
    if (name === "TooMany") {
      return "Too many calls from this address just now. Try again in " + err.message + " s.";
    }
    if (name === "BridgeUnreachable" || name === "TypeError") {
      return "Cannot reach the bridge at " + location.host + ". Is voicebridge serve " +
             "still running?";
    }
    return (err && err.message) || String(err);
  }

  function failure(name, message) {
    const err = new Error(message || name);
    err.name = name;
    return err;
  }

  function setState(state, info) {
    phone.state = state;
    ui.state.dataset.state = state;
    ui.state.className = "state " + state;
    ui.state.textContent = STATE_LABELS[state] || state;
    const inCall = state === "connecting" || state === "connected";
    ui.call.disabled = inCall;
    ui.hangup.disabled = !inCall;
    ui.mute.disabled = !inCall;
    ui.keys.forEach((k) => { k.disabled = state !== "connected"; });
    if (info !== undefined) ui.info.textContent = info;
    ui.info.classList.toggle("error", state === "error");
  }

  function addLine(kind, text, extra) {
    const li = document.createElement("li");
    li.className = kind;
    li.dataset.kind = kind;
    const who = document.createElement("b");
    who.textContent = { caller: "You", agent: "Agent", system: "·" }[kind] || kind;
    li.appendChild(who);
    li.appendChild(document.createTextNode(" " + text));
    if (extra) li.title = extra;
    ui.transcript.appendChild(li);
    li.scrollIntoView({ block: "end" });
  }

  // The caller's words as they are transcribed: one line per turn, grown by each
  // call.transcript_delta, replaced by the turn's call.transcript.
  let partial = null;

  function addDelta(e) {
    if (!partial || partial.dataset.item !== e.item_id) {
      addLine("caller", "");
      partial = ui.transcript.lastChild;
      partial.dataset.item = e.item_id;
      partial.classList.add("partial");
    }
    partial.lastChild.textContent += e.delta || "";
  }

  function addTranscript(e) {
    if (e.role === "caller" && partial) {
      partial.lastChild.textContent = " " + (e.text || "");
      partial.classList.remove("partial");
      partial = null;
      return;
    }
    addLine(e.role === "caller" ? "caller" : "agent", e.text || "");
  }

  const eventHandlers = {
    "call.started": () => setState("connected", "Connected. Speak, or use the keypad."),
    "call.transcript_delta": addDelta,
    "call.transcript": addTranscript,
    "call.dtmf": (e) => addLine("system", "key " + e.digit + (e.action ? " → " + e.action : "")),
    "call.barge_in": (e) => addLine("system", "interrupted the agent after " + e.heard_ms + " ms"),
    "call.tool_call": (e) => addLine("system", "tool " + e.name + (e.ok ? " ok" : " failed")),
    "call.fallback": (e) => addLine("system", "fallback: " + (e.reason || "")),
    "call.ended": (e) => finish("call ended: " + (e.reason || ""), true),
  };

  function onEvent(message) {
    let event;
    try { event = JSON.parse(message.data); } catch (err) { return; }
    phone.events.push(event);
    const handler = eventHandlers[event.type];
    if (handler) handler(event);
  }

  async function listMicrophones() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    const devices = await navigator.mediaDevices.enumerateDevices();
    const current = ui.mic.value;
    ui.mic.innerHTML = '<option value="">default</option>';
    devices.filter((d) => d.kind === "audioinput").forEach((d, i) => {
      const option = document.createElement("option");
      option.value = d.deviceId;
      option.textContent = d.label || "microphone " + (i + 1);
      ui.mic.appendChild(option);
    });
    ui.mic.value = current;
  }

  function waitForIce(pc, limitMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(done, limitMs);
    });
  }

  function meter(stream, bar) {
    const ctx = phone.audioContext;
    const source = ctx.createMediaStreamSource(stream);
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 512;
    source.connect(analyser);
    return { analyser, bar, data: new Float32Array(analyser.fftSize), level: 0 };
  }

  function drawMeters() {
    if (!phone.meters) return;
    phone.meters.forEach((m) => {
      m.analyser.getFloatTimeDomainData(m.data);
      let sum = 0;
      for (let i = 0; i < m.data.length; i++) sum += m.data[i] * m.data[i];
      const rms = Math.sqrt(sum / m.data.length);
      const db = rms > 0 ? 20 * Math.log10(rms) : -100;
      m.level = db;
      m.bar.style.width = Math.max(0, Math.min(100, (db + 60) * 100 / 60)) + "%";
    });
    requestAnimationFrame(drawMeters);
  }

  // A single-use call token for the next offer (401: not logged in, 429: rate-limited).
  async function callToken() {
    let response;
    try {
      response = await fetch("webrtc/token", {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": config.csrf || "" },
      });
    } catch (err) {
      throw failure("BridgeUnreachable");
    }
    const body = await response.json().catch(() => ({}));
    if (response.status === 401 || response.status === 403) throw failure("NeedsLogin");
    if (response.status === 429) {
      throw failure("TooMany", response.headers.get("Retry-After") || "a few");
    }
    if (!response.ok || !body.token) {
      throw failure("Refused", "The bridge refused the call (HTTP " + response.status + "): " +
                    (body.error || response.statusText || "error") + ".");
    }
    return body.token;
  }

  async function call() {
    setState("connecting", "Asking for the microphone…");
    ui.transcript.innerHTML = "";
    phone.events = [];
    phone.error = null;
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw failure("NoMicrophoneApi");
      }
      const constraints = { audio: ui.mic.value ? { deviceId: { exact: ui.mic.value } } : true };
      phone.stream = await navigator.mediaDevices.getUserMedia(constraints);
      await listMicrophones();
      const pc = new RTCPeerConnection({ iceServers: config.iceServers || [] });
      phone.pc = pc;
      for (const label of ["dtmf", "bye", "events"]) {
        phone.channels[label] = pc.createDataChannel(label);
      }
      phone.channels.events.onmessage = onEvent;
      phone.channels.bye.onmessage = () => finish("the agent hung up", true);
      phone.stream.getAudioTracks().forEach((t) => pc.addTrack(t, phone.stream));
      pc.ontrack = (e) => {
        // Chromium only decodes remote audio that is played: attach it to <audio>.
        ui.remote.srcObject = e.streams[0] || new MediaStream([e.track]);
        ui.remote.play().catch(() => {});
        if (phone.audioContext && phone.meters) phone.meters.push(meter(ui.remote.srcObject, ui.levelOut));
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "failed") {
          fail("The audio connection to the bridge failed (no network path for the media). " +
               "Across NAT or a firewall the bridge needs STUN/TURN servers in [webrtc] " +
               "ice_servers.");
        }
      };
      phone.audioContext = new (window.AudioContext || window.webkitAudioContext)();
      phone.meters = [meter(phone.stream, ui.levelIn)];
      if (ui.remote.srcObject) phone.meters.push(meter(ui.remote.srcObject, ui.levelOut));
      requestAnimationFrame(drawMeters);

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc, 3000);
      ui.info.textContent = "Calling…";
      const token = await callToken();
      let response;
      try {
        response = await fetch("webrtc/offer", {
          method: "POST",
          headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
          body: JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp,
                                 called: ui.called.value.trim() }),
        });
      } catch (err) {
        throw failure("BridgeUnreachable");
      }
      const answer = await response.json().catch(() => ({}));
      if (response.status === 429) {
        throw failure("TooMany", response.headers.get("Retry-After") || "a few");
      }
      if (!response.ok) {
        const why = answer.error || response.statusText || "error";
        throw failure("Refused", "The bridge refused the call (HTTP " + response.status +
                      "): " + why + ".");
      }
      phone.callId = answer.call_id;
      phone.codec = answer.codec;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      ui.info.textContent = "Connecting media (" + answer.codec + ")…";
    } catch (err) {
      fail(explain(err));
    }
  }

  // The call could not be made or its media failed: clean up and say why, plainly.
  function fail(why) {
    phone.error = why;
    finish(why);
    setState("error", why);
  }

  // remoteEnded: the bridge ended the call (no bye to send back).
  function finish(why, remoteEnded) {
    if (phone.state === "ended" || phone.state === "idle" || phone.state === "error") {
      if (why) ui.info.textContent = why;
      return;
    }
    const bye = phone.channels.bye;
    if (bye && bye.readyState === "open" && !remoteEnded) {
      try { bye.send("bye"); } catch (err) { /* closing anyway */ }
    }
    const pc = phone.pc;
    // Give the bye a moment to leave before the transport goes away.
    setTimeout(() => { if (pc) pc.close(); }, 200);
    if (phone.stream) phone.stream.getTracks().forEach((t) => t.stop());
    phone.meters = null;
    if (phone.audioContext) { phone.audioContext.close(); phone.audioContext = null; }
    ui.levelIn.style.width = "0%";
    ui.levelOut.style.width = "0%";
    setState("ended", why || "Call ended.");
  }

  function press(digit) {
    const dtmf = phone.channels.dtmf;
    if (!dtmf || dtmf.readyState !== "open") return;
    dtmf.send(digit);
    phone.dtmfSent += digit;
    addLine("system", "sent key " + digit);
  }

  ui.call.addEventListener("click", call);
  ui.hangup.addEventListener("click", () => finish("you hung up"));
  ui.mute.addEventListener("click", () => {
    if (!phone.stream) return;
    const muted = ui.mute.getAttribute("aria-pressed") !== "true";
    phone.stream.getAudioTracks().forEach((t) => { t.enabled = !muted; });
    ui.mute.setAttribute("aria-pressed", String(muted));
    ui.mute.textContent = muted ? "Unmute" : "Mute";
  });
  ui.keys.forEach((k) => k.addEventListener("click", () => press(k.dataset.digit)));
  document.addEventListener("keydown", (e) => {
    if (phone.state === "connected" && /^[0-9*#]$/.test(e.key) && e.target.tagName !== "INPUT") {
      press(e.key);
    }
  });
  setState("idle", config.public || config.csrf
    ? "Press Call to talk to the agent. The browser will ask for the microphone."
    : "Calls from this page are for the operator: log in with the dashboard login URL " +
      "that voicebridge serve printed, then come back and press Call.");
  listMicrophones();
})();

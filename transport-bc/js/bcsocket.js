// Placeholder for the BrowserChannel browser client (BCSocket), which issue 5 writes.
// It is served at <base>/bcsocket.js so that the route exists and can be tested.
export class BCSocket {
  constructor() {
    throw new Error("bcsocket.js: the browser client is not shipped yet");
  }
}
